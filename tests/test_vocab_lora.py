"""Vocabulary extension + LoRA: after extend_vocab, `--use_lora --lora_modules_to_save
embedding,output` trains the adapters and the whole embedding and output layers (the new rows
must learn), and leaves every other base tensor as it was (one process)."""
import torch

import tencentpretrain
from tencentpretrain.utils.weights import load_state_dict_file, save_state_dict_file
from tencentpretrain.vocab.extend import extend_vocab
from tests.training_support import LLAMA_SPM, TINY, _preprocess, logged_losses, run_in_process
from tests.vocab_support import clue_lines, merged_tokenizer


def test_lora_with_modules_to_save_trains_the_new_rows(tmp_path, capsys):
    _, merged = merged_tokenizer()
    torch.manual_seed(0)
    base, extended = str(tmp_path / "base.bin"), str(tmp_path / "extended.bin")
    save_state_dict_file(tencentpretrain.build_model(TINY, 32000).state_dict(), base)
    extend_vocab(base, TINY, LLAMA_SPM, merged, extended, log=lambda *a: None)
    corpus = tmp_path / "zh.txt"
    corpus.write_text("\n".join(clue_lines()[:20]) + "\n", encoding="utf-8")
    dataset = _preprocess(str(corpus), merged, str(tmp_path / "zh_lm"), "lm", 64)
    out = str(tmp_path / "m")
    run_in_process([
        "--dataset_path", dataset, "--spm_model_path", merged, "--config_path", TINY,
        "--pretrained_model_path", extended, "--output_model_path", out, "--total_steps", "4",
        "--save_checkpoint_steps", "4", "--report_steps", "1", "--batch_size", "4",
        "--learning_rate", "1e-2", "--warmup", "0", "--use_lora", "--lora_r", "4",
        "--lora_modules_to_save", "embedding,output"])
    losses = logged_losses(capsys.readouterr().out)
    assert losses[4] < losses[1], losses
    before, adapter = load_state_dict_file(extended), load_state_dict_file(out + ".safetensors")
    embedding = "embedding.word.embedding.weight"
    assert embedding in adapter and "target.lm.output_layer.weight" in adapter
    new_rows = slice(32000, before[embedding].shape[0])
    assert before[embedding].shape[0] > 32000
    assert not torch.equal(adapter[embedding][new_rows], before[embedding][new_rows])
    assert all(".lora_" in name or name in before for name in adapter)
    model = tencentpretrain.load_model(TINY, extended, lora_model_path=out)
    for name, tensor in model.state_dict().items():
        if ".lora_" in name or name in adapter:
            continue
        assert torch.equal(tensor, before[name]), name  # the frozen base came back unchanged
