"""--compile (torch.compile per transformer layer) trains exactly like eager."""
from tests.training_support import logged_losses, pretrain_argv, run_in_process


def test_compiled_layers_train_like_eager(tmp_path, capsys):
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        run_in_process(pretrain_argv(str(tmp_path / name / "m"), steps=3, save=3, extra=extra))
        losses[name] = logged_losses(capsys.readouterr().out)
    assert sorted(losses["compiled"]) == [1, 2, 3]
    for step, loss in losses["eager"].items():
        assert abs(losses["compiled"][step] - loss) <= 2e-4, (step, losses)
