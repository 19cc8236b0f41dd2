"""Training on conversations, end to end: a tiny model tuned on a tiny multi-turn ChatML set
answers a held-out conversation's second turn by the set's pattern and stops at <|im_end|>;
a 2-rank ZeRO-3 run on the same data lowers the loss."""
import itertools
import json

import numpy as np
import pytest

import tencentpretrain
from tencentpretrain.chat import ChatSession, load_chat_template
from tencentpretrain.data import preprocess
from tencentpretrain.generation import SamplingOptions, TextGenerator, generate
from tencentpretrain.tokenizer import load_tokenizer
from tests.test_chat import CHATML_CONFIG
from tests.test_hf_tokenizer import QWEN_SPLIT, train_byte_level_bpe, write_folder
from tests.training_support import TINY, ZERO3, logged_losses, run_in_process, run_script

NAMES = ["Dana", "Omar", "Lena", "Ivan", "Mira", "Paul", "Rosa", "Tomas"]
THINGS = ["tea", "jazz", "chess", "rain", "boats", "maps"]
HELD_OUT = {("Lena", "chess"), ("Paul", "rain"), ("Tomas", "tea")}
SYSTEM = "Remember what the user says."


def conversation(name, thing, question):
    first = (f"My name is {name} and I like {thing}.", f"Nice to meet you, {name}.")
    second = (("What is my name?", f"Your name is {name}.") if question == 0
              else ("What do I like?", f"You like {thing}."))
    return [first, second]


def messages(pairs):
    out = [{"role": "system", "content": SYSTEM}]
    for user, answer in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": out}


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    """(tokenizer folder, dataset) of every (name, thing, question) but the held-out pairs."""
    tmp = tmp_path_factory.mktemp("chat_training")
    convs = [conversation(n, t, q) for n, t in itertools.product(NAMES, THINGS)
             if (n, t) not in HELD_OUT for q in (0, 1)]
    corpus = tmp / "chat.jsonl"
    corpus.write_text("".join(json.dumps(messages(c)) + "\n" for c in convs))
    lines = [SYSTEM] + [u + " " + a for c in convs for u, a in c]
    tok = train_byte_level_bpe(lines, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], QWEN_SPLIT,
                               nfc=True, vocab_size=400)
    folder = write_folder(str(tmp / "tok"), tok, tokenizer_config=CHATML_CONFIG)
    dataset = str(tmp / "ds")
    preprocess(str(corpus), None, dataset, tokenizer_path=folder, data_processor="conversation",
               chat_template="chatml", seq_length=96, progress=False)
    return folder, dataset


def train_argv(folder, dataset, output, steps, batch):
    return ["--dataset_path", dataset, "--tokenizer_path", folder, "--config_path", TINY,
            "--output_model_path", output, "--total_steps", str(steps), "--save_checkpoint_steps",
            str(steps), "--report_steps", "1", "--batch_size", str(batch), "--learning_rate",
            "3e-3", "--warmup", "0", "--data_processor", "conversation", "--prefix_lm_loss"]


def test_tuned_model_answers_a_held_out_second_turn(chat_data, tmp_path):
    folder, dataset = chat_data
    output = str(tmp_path / "m")
    run_in_process(train_argv(folder, dataset, output, 200, 8))
    tokenizer = load_tokenizer(None, folder)
    model = tencentpretrain.load_model(TINY, output + "-200").eval()
    greedy = SamplingOptions(top_k=1)
    for name, thing in sorted(HELD_OUT):
        for question in (0, 1):
            (user1, answer1), (user2, answer2) = conversation(name, thing, question)
            generator = TextGenerator(model, tokenizer, 96, 16, greedy)
            chat = ChatSession(generator, load_chat_template("chatml", tokenizer), SYSTEM)
            assert chat.reply(user1) == answer1
            prompt = chat.prompt_ids(user2)
            assert chat.reply(user2) == answer2
            # it stopped at the end-of-turn token, not at the length limit
            free = generate(model, [prompt], 16, options=greedy)[0]
            assert free[len(chat.last_ids)] == tokenizer.hf.token_to_id("<|im_end|>")


def test_zero3_two_ranks_on_conversations_lower_the_loss(chat_data, tmp_path):
    folder, dataset = chat_data
    argv = train_argv(folder, dataset, str(tmp_path / "z"), 20, 4) + [
        "--deepspeed", "--deepspeed_config", ZERO3, "--enable_zero3", "--world_size", "2"]
    result = run_script(argv, launcher=["deepspeed", "--num_gpus", "2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = logged_losses(result.stdout + result.stderr)
    assert sorted(losses) == list(range(1, 21))
    assert np.mean([losses[s] for s in range(16, 21)]) < 0.7 * np.mean([losses[s] for s in range(1, 6)])
