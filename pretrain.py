"""Pre-train or instruction-tune a LLaMA model (TencentPretrain's command line).

    deepspeed pretrain.py --deepspeed --deepspeed_config models/deepspeed_zero3_config.json \
        --enable_zero3 --pretrained_model_path models/llama-7b.bin --dataset_path dataset \
        --spm_model_path tokenizer.model --config_path models/llama/7b_config.json \
        --output_model_path models/llama_zh_7b --world_size 8 --data_processor lm \
        --total_steps 300000 --save_checkpoint_steps 5000 --batch_size 24
    python3 pretrain.py ...   # the same without --deepspeed: one process, for debugging

See docs/training.md. All the work is in tencentpretrain.training.
"""
import contextlib
import os

from tencentpretrain.training import build_parser, train
from tencentpretrain.training.checkpointing import checkpoints_dir
from tencentpretrain.training.settings import Launch
from tencentpretrain.utils.cli import run


def launched_rank():
    return Launch.from_environment().rank


def parse_args(argv=None):
    """Every rank parses the same command line; only rank 0 prints --help, usage and errors."""
    parser = build_parser()
    if launched_rank() == 0:
        return parser.parse_args(argv)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run(lambda: train(args), rank=launched_rank(),
        interrupted=f"interrupted; {checkpoints_dir(args.output_model_path)} holds the latest "
                    "complete save (--resume_from_checkpoint)")


if __name__ == "__main__":
    main()
