"""Conversation data (preprocess.py --data_processor conversation --chat_template NAME): ids and
loss masks equal transformers' apply_chat_template for each named template (and for the same
template read from a tokenizer folder), record formats, skipping and turn dropping counted,
alpaca unchanged, packing, training with --prefix_lm_loss. Tokenizers are trained here on the
project's demo corpus (no ../shared needed)."""
import filecmp
import json
import os

import numpy as np
import pytest
import torch

from tencentpretrain.chat_templates import (TEMPLATES, ChatTemplateError, encode_conversation,
                                            get_template)
from tencentpretrain.data import DatasetError, TokenDataset, collate, preprocess
from tencentpretrain.tokenizer import load_tokenizer
from tests.test_hf_tokenizer import LLAMA3_SPLIT, QWEN_SPLIT, train_byte_level_bpe, write_folder
from tests.training_support import (DEMO_CORPUS, DEMO_INSTRUCTIONS, demo_tokenizer,
                                    loss_and_grads)

SYSTEM = "You are a terse assistant."
PAIRS = [("What is two plus two?", "Four."), ("And three plus three?", " Six, of course.\n"),
         ("Thanks!", "You are welcome.")]
FAMILIES = {  # template -> (specials, tokenizer_config, bos for the post-processor)
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
               {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, None),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"], {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
               "<|begin_of_text|>"),
    "llama2": (["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}, "<s>"),
    "mistral": (["<s>", "</s>"], {"bos_token": "<s>", "eos_token": "</s>"}, "<s>"),
}
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama2": "</s>", "mistral": "</s>"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chat")
    with open(DEMO_CORPUS, encoding="utf-8") as f:
        lines = f.readlines()
    out = {}
    for name, (specials, config, bos) in FAMILIES.items():
        split = QWEN_SPLIT if name == "chatml" else LLAMA3_SPLIT
        tok = train_byte_level_bpe(lines, specials, split, bos=bos, nfc=name == "chatml", vocab_size=700)
        out[name] = write_folder(str(tmp / name), tok, tokenizer_config=config)
    return out


def messages(system=SYSTEM, pairs=PAIRS):
    out = [{"role": "system", "content": system}] if system else []
    for user, answer in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return out


def transformers_ids(folder, jinja, msgs, generation_prompt=False):
    from transformers import PreTrainedTokenizerFast
    config = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    tk = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"),
                                 **{k: v for k, v in config.items() if v is not None})
    out = tk.apply_chat_template(msgs, chat_template=jinja, tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=not generation_prompt,
                                 add_generation_prompt=generation_prompt)
    return out["input_ids"], out.get("assistant_masks")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_template_equals_transformers(folders, name):
    """3 turns with a system prompt: our ids == apply_chat_template(tokenize=True) of the
    family's Jinja, our trained tokens == its assistant mask ({% generation %}); one bos where
    the family has one (LLaMA-2: one per pair, as published); the end-of-turn token trained."""
    tokenizer = load_tokenizer(None, folders[name])
    template = TEMPLATES[name]
    encoded = encode_conversation(template, tokenizer, SYSTEM, PAIRS)
    ids, mask = transformers_ids(folders[name], template.jinja, messages())
    assert encoded.ids == ids
    assert [int(t) for t in encoded.trained] == mask
    bos_count = encoded.ids.count(tokenizer.bos_id) if tokenizer.bos_id is not None else 0
    assert bos_count == {"chatml": 0, "llama3": 1, "llama2": 3, "mistral": 1}[name]
    eot = tokenizer.hf.token_to_id(END_OF_TURN[name])
    ends = [i for i, t in enumerate(encoded.ids) if t == eot]
    assert len([i for i in ends if encoded.trained[i]]) == len(PAIRS)
    # the prompt of a generation: the same as transformers' add_generation_prompt
    if name in ("chatml", "llama3"):
        prompt = encode_conversation(template, tokenizer, SYSTEM, PAIRS[:2] + [(PAIRS[2][0], None)], True)
        assert prompt.ids == transformers_ids(folders[name], template.jinja,
                                              messages(pairs=PAIRS[:2]) + [{"role": "user", "content": PAIRS[2][0]}],
                                              generation_prompt=True)[0]


@pytest.mark.parametrize("marked", [True, False])
def test_tokenizer_template_equals_named(folders, tmp_path, marked):
    """--chat_template tokenizer on a folder whose Jinja copies chatml gives chatml's dataset;
    a template without {% generation %} (as the published ones) trains the same tokens."""
    folder = tmp_path / "qwen"
    folder.mkdir()
    for f in os.listdir(folders["chatml"]):
        (folder / f).write_bytes(open(os.path.join(folders["chatml"], f), "rb").read())
    jinja = TEMPLATES["chatml"].jinja
    if not marked:
        jinja = jinja.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    config = json.load(open(folder / "tokenizer_config.json"))
    config["chat_template"] = jinja
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"messages": messages()}) + "\n")
    tokenizer = load_tokenizer(None, str(folder))
    a = encode_conversation(get_template("tokenizer", str(folder)), tokenizer, SYSTEM, PAIRS)
    b = encode_conversation(TEMPLATES["chatml"], tokenizer, SYSTEM, PAIRS)
    assert a.ids == b.ids and a.trained == b.trained and a.pair_ends[1:] == b.pair_ends[1:]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def sharegpt(system, pairs):
    turns = [{"from": "system", "value": system}] if system else []
    for user, answer in pairs:
        turns += [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
    return {"conversations": turns}


def dataset_files_equal(a, b):
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        if name != "meta.json":
            assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), name


def test_formats_processes_skips_and_truncation(folders, tmp_path):
    """ShareGPT and OpenAI records give byte-identical datasets, 1 and 2 processes too; bad
    records are skipped and counted with their lines; later pairs are dropped whole."""
    convs = [(SYSTEM, PAIRS), (None, PAIRS[:1]), (SYSTEM, PAIRS[1:])] * 5
    bad = [{"messages": [{"role": "user", "content": "no answer"}]},
           {"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]},
           {"messages": []}]
    openai = [{"messages": messages(s, p)} for s, p in convs]
    share = [sharegpt(s, p) for s, p in convs]
    a = write_jsonl(tmp_path / "openai.jsonl", openai[:7] + bad + openai[7:])
    b = write_jsonl(tmp_path / "share.jsonl", share[:7] + bad + share[7:])
    common = dict(tokenizer_path=folders["chatml"], data_processor="conversation", progress=False,
                  chat_template="chatml", seq_length=1024)
    s1 = preprocess(a, None, str(tmp_path / "a1"), **common)
    preprocess(a, None, str(tmp_path / "a2"), processes_num=2, **common)
    preprocess(b, None, str(tmp_path / "b1"), **common)
    dataset_files_equal(tmp_path / "a1", tmp_path / "a2")
    dataset_files_equal(tmp_path / "a1", tmp_path / "b1")
    assert s1["documents"] == 15 and s1["skipped"] == {
        "does not end with an assistant turn": 1, "turns do not alternate user/assistant": 1, "no turns": 1}
    assert s1["skipped_at"]["does not end with an assistant turn"] == [8]
    # turn dropping: the 3-pair conversation keeps 2 pairs at a seq_length between the two
    tokenizer = load_tokenizer(None, folders["chatml"])
    ends = encode_conversation(TEMPLATES["chatml"], tokenizer, SYSTEM, PAIRS).pair_ends
    first = encode_conversation(TEMPLATES["chatml"], tokenizer, None, PAIRS[:1]).pair_ends
    s = preprocess(a, None, str(tmp_path / "short"), **dict(common, seq_length=ends[2] - 1))
    assert s["truncated"] == 5 and s["dropped_pairs"] == 5
    ds = TokenDataset(str(tmp_path / "short"))
    assert len(ds[0].tokens) == ends[2]
    s = preprocess(a, None, str(tmp_path / "tiny"), **dict(common, seq_length=first[1] - 1))
    assert s["skipped"]["first turn pair too long for seq_length"] == 10


def test_loss_options(folders, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages()}])
    tokenizer = load_tokenizer(None, folders["llama3"])
    encoded = encode_conversation(TEMPLATES["llama3"], tokenizer, SYSTEM, PAIRS)
    masks = {}
    for option in ("default", "train_on_prompt", "mask_history"):
        kwargs = {option: True} if option != "default" else {}
        preprocess(corpus, None, str(tmp_path / option), data_processor="conversation",
                   tokenizer_path=folders["llama3"], chat_template="llama3", progress=False, **kwargs)
        masks[option] = TokenDataset(str(tmp_path / option))[0].loss_mask
    assert masks["default"].tolist() == encoded.trained
    assert masks["train_on_prompt"].all()
    last = encoded.pair_ends[2]
    assert not masks["mask_history"][:last].any()
    assert masks["mask_history"][last:].tolist() == encoded.trained[last:]
    # collate with --prefix_lm_loss: label t counts iff token t + 1 is trained
    batch = collate([TokenDataset(str(tmp_path / "default"))[0]], tokenizer.pad_id, True)
    assert batch["loss_mask"][0].tolist() == encoded.trained[1:]


def test_alpaca_template_gives_alpaca_ids(tmp_path):
    """--chat_template alpaca on alpaca records: the alpaca processor's ids, its answer + eos trained."""
    spm_path = demo_tokenizer()
    common = dict(progress=False, seq_length=256)
    preprocess(DEMO_INSTRUCTIONS, spm_path, str(tmp_path / "alpaca"), data_processor="alpaca", **common)
    preprocess(DEMO_INSTRUCTIONS, spm_path, str(tmp_path / "conv"), data_processor="conversation",
               chat_template="alpaca", **common)
    alpaca, conv = TokenDataset(str(tmp_path / "alpaca")), TokenDataset(str(tmp_path / "conv"))
    assert len(alpaca) == len(conv) == 80
    for i in range(len(alpaca)):
        a, c = alpaca[i], conv[i]
        assert a.tokens.tolist() == c.tokens.tolist()
        assert c.loss_mask.tolist() == [t >= a.prompt_length for t in range(len(a.tokens))]
        assert torch.equal(collate([a], 0, True)["loss_mask"], collate([c], 0, True)["loss_mask"])


def test_missing_special_tokens_is_one_line_error(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages()}])
    with pytest.raises(ChatTemplateError, match=r"<\|im_start\|>, <\|im_end\|> not single tokens .*extend_vocab"):
        preprocess(corpus, demo_tokenizer(), str(tmp_path / "x"), data_processor="conversation",
                   chat_template="chatml", progress=False)
    with pytest.raises(DatasetError, match="--chat_template applies to --data_processor conversation"):
        preprocess(corpus, demo_tokenizer(), str(tmp_path / "x"), data_processor="alpaca",
                   chat_template="chatml", progress=False)


def test_packed_conversations_mask_like_one_by_one(folders, tmp_path):
    """Packed: each conversation keeps its own mask, isolation and restarting positions."""
    convs = [(SYSTEM, PAIRS), (None, PAIRS[:1]), (SYSTEM, PAIRS[1:]), (None, PAIRS[2:])] * 3
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"messages": messages(s, p)} for s, p in convs])
    common = dict(tokenizer_path=folders["chatml"], data_processor="conversation", progress=False,
                  chat_template="chatml", seq_length=256)
    preprocess(corpus, None, str(tmp_path / "packed"), packing=True, **common)
    preprocess(corpus, None, str(tmp_path / "plain"), **common)
    packed, plain = TokenDataset(str(tmp_path / "packed")), TokenDataset(str(tmp_path / "plain"))
    assert len(packed) < len(plain)
    singles = {tuple(plain[i].tokens.tolist()): plain[i] for i in range(len(plain))}
    count = 0
    for i in range(len(packed)):
        sample = packed[i]
        batch = collate([sample], packed.pad_id, True)
        assert batch["isolate_segments"]
        for k in range(1, int(sample.segments.max()) + 1):
            where = np.flatnonzero(sample.segments == k)
            alone = singles[tuple(sample.tokens[where].tolist())]
            expected = collate([alone], plain.pad_id, True)["loss_mask"][0]
            assert batch["loss_mask"][0, where[0]:where[-1]].tolist() == expected.tolist()
            assert batch["position_ids"][0, where[0]].item() == 0
            count += 1
    assert count == len(plain)


DEMO_CONVERSATIONS = os.path.join(os.path.dirname(DEMO_CORPUS), "conversations.jsonl")


@pytest.fixture(scope="module")
def demo_packed(tmp_path_factory):
    """The project's multi-turn demo file, packed, with the demo tokenizer and llama2's template."""
    out = str(tmp_path_factory.mktemp("demo_chat") / "packed")
    preprocess(DEMO_CONVERSATIONS, demo_tokenizer(), out, data_processor="conversation",
               chat_template="llama2", seq_length=256, packing=True, progress=False)
    return out


def test_packed_loss_and_grads_equal_one_by_one(demo_packed):
    """Summed loss and gradients of packed conversations (assistant spans only) == each alone."""
    import tencentpretrain
    from tencentpretrain.data import Sample
    from tests.conftest import ROOT
    torch.manual_seed(0)
    model = tencentpretrain.build_model(os.path.join(ROOT, "models", "llama", "tiny_gqa_config.json"), 1000).float()
    ds = TokenDataset(demo_packed)
    sample = max((ds[i] for i in range(len(ds))), key=lambda s: s.segments.max())
    assert sample.segments.max() >= 2
    alone = [Sample(sample.tokens[sample.segments == k], 0, np.ones(int((sample.segments == k).sum()), np.int32),
                    None, sample.loss_mask[sample.segments == k])
             for k in range(1, int(sample.segments.max()) + 1)]
    packed = loss_and_grads(model, [collate([sample], ds.pad_id, True)])
    single = loss_and_grads(model, [collate([s], ds.pad_id, True) for s in alone])
    assert packed[1] == single[1] == sum(int(s.loss_mask[1:].sum()) for s in alone)
    assert float(packed[0]) == pytest.approx(float(single[0]), rel=1e-5)
    for name, grad in packed[2].items():
        assert (grad - single[2][name]).abs().max() <= 1e-5 * single[2][name].abs().max(), name


def test_training_on_conversations_lowers_loss(demo_packed, tmp_path, capsys):
    """pretrain.py --data_processor conversation --prefix_lm_loss on packed demo conversations."""
    from tests.training_support import TINY, logged_losses, run_in_process
    argv = ["--dataset_path", demo_packed, "--spm_model_path", demo_tokenizer(), "--config_path", TINY,
            "--output_model_path", str(tmp_path / "model"), "--total_steps", "30",
            "--save_checkpoint_steps", "30", "--report_steps", "1", "--batch_size", "4",
            "--learning_rate", "3e-3", "--warmup", "0", "--data_processor", "conversation",
            "--prefix_lm_loss"]
    capsys.readouterr()
    run_in_process(argv)
    losses = logged_losses(capsys.readouterr().out)
    assert len(losses) >= 20
    assert np.mean([losses[s] for s in range(26, 31)]) < 0.7 * np.mean([losses[s] for s in range(1, 6)])
