"""The usual path after extension: preprocess with the merged tokenizer, a real 2-rank
DeepSpeed ZeRO-3 run continuing from extended.bin (padded to a multiple of 64), then the HF
export whose tokenizer is the merged model. One launch for the module."""
import os

import pytest
import sentencepiece as spm
import torch

import tencentpretrain
from tencentpretrain.utils.weights import load_state_dict_file, save_state_dict_file
from tencentpretrain.vocab.extend import extend_vocab
from tests.training_support import (LLAMA_SPM, TINY, ZERO3, _preprocess, logged_losses,
                                         run_script)
from tests.vocab_support import clue_lines, held_out_chinese, merged_tokenizer

STEPS = 10


@pytest.fixture(scope="module")
def extended_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab_zero3")
    _, merged = merged_tokenizer()
    torch.manual_seed(0)
    base, extended = str(root / "base.bin"), str(root / "extended.bin")
    save_state_dict_file(tencentpretrain.build_model(TINY, 32000).state_dict(), base)
    extend_vocab(base, TINY, LLAMA_SPM, merged, extended, pad_to_multiple_of=64,
                 log=lambda *a: None)
    corpus = root / "zh.txt"
    corpus.write_text("\n".join(clue_lines()[:40]) + "\n", encoding="utf-8")
    dataset = _preprocess(str(corpus), merged, str(root / "zh_lm"), "lm", 64)
    output = str(root / "m")
    result = run_script([
        "--dataset_path", dataset, "--spm_model_path", merged, "--config_path", TINY,
        "--pretrained_model_path", extended, "--output_model_path", output,
        "--total_steps", str(STEPS), "--save_checkpoint_steps", str(STEPS), "--report_steps", "1",
        "--batch_size", "2", "--learning_rate", "1e-2", "--warmup", "0", "--data_processor", "lm",
        "--deepspeed", "--deepspeed_config", ZERO3, "--enable_zero3", "--world_size", "2"],
        launcher=["deepspeed", "--num_gpus", "2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return merged, extended, f"{output}-{STEPS}", logged_losses(result.stdout)


def test_zero3_continues_training_from_the_extended_checkpoint(extended_run):
    merged, extended, trained, losses = extended_run
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.5, losses
    before, after = load_state_dict_file(extended), load_state_dict_file(trained)
    rows = spm.SentencePieceProcessor(model_file=merged).GetPieceSize()
    assert after["embedding.word.embedding.weight"].shape[0] == -(-rows // 64) * 64
    assert not torch.equal(before["embedding.word.embedding.weight"],
                           after["embedding.word.embedding.weight"])


def test_hf_export_of_the_extended_model_uses_the_merged_tokenizer(extended_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    merged, _, trained, _ = extended_run
    out = str(tmp_path / "hf")
    main(["--input_model_path", trained, "--config_path", TINY, "--output_model_path", out,
          "--spm_model_path", merged])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=merged)
    text = held_out_chinese()[0][:200]
    ids = hf_tokenizer(text)["input_ids"]
    assert ids == [sp.bos_id()] + sp.encode(text) and max(ids) >= 32000  # merged pieces
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ours = tencentpretrain.load_model(TINY, trained)
    with torch.no_grad():
        x = torch.tensor([ids[:32]])
        assert (model(x).logits - ours(x)).abs().max().item() <= 1e-4
    assert os.path.isfile(os.path.join(out, "tokenizer.model"))
