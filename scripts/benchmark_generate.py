"""New tokens per second of generation with the KV cache and with full recomputation of
the whole sequence at every step (TencentPretrain's way), on a random model."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tencentpretrain  # noqa: E402
from tencentpretrain.generation import SamplingOptions, generate  # noqa: E402
from tencentpretrain.model_builder import pick_device_dtype  # noqa: E402


def tokens_per_second(model, prompts, new_tokens, use_cache):
    generate(model, prompts, 4, options=SamplingOptions(top_k=1), use_cache=use_cache)  # warm-up
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(model, prompts, new_tokens, options=SamplingOptions(top_k=1),
                   use_cache=use_cache)  # no EOS: every row runs to new_tokens
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return sum(map(len, out)) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config_path", default="models/llama/tiny_config.json")
    parser.add_argument("--vocab_size", type=int, default=32000, help="LLaMA's by default.")
    parser.add_argument("--prompt_length", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    device, dtype = pick_device_dtype(args.device, args.dtype)
    torch.manual_seed(0)
    model = tencentpretrain.build_model(args.config_path, args.vocab_size, device=device)
    model = model.to(dtype).eval()
    prompts = torch.randint(3, args.vocab_size, (args.batch_size, args.prompt_length)).tolist()
    print(f"{args.config_path}  device {device}  dtype {str(dtype).removeprefix('torch.')}  "
          f"batch {args.batch_size}  prompt {args.prompt_length}  new tokens {args.new_tokens}  "
          f"threads {torch.get_num_threads()}")
    cached = tokens_per_second(model, prompts, args.new_tokens, use_cache=True)
    print(f"KV cache            {cached:10.1f} new tokens/s")
    full = tokens_per_second(model, prompts, args.new_tokens, use_cache=False)
    print(f"full recomputation  {full:10.1f} new tokens/s")
    print(f"speed-up            {cached / full:10.1f}x")


if __name__ == "__main__":
    main()
