#!/usr/bin/env bash
# Quick start on a CPU machine, minutes end to end: train a SentencePiece model on the demo
# text, preprocess lm and alpaca datasets, pre-train the tiny LLaMA with 2-rank DeepSpeed
# ZeRO-3, instruction-tune it, and generate a few lines.
#   bash scripts/quickstart.sh [WORK_DIR]      (default: quickstart/)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-quickstart}
STEPS=${QUICKSTART_STEPS:-200}
mkdir -p "$WORK"

echo "== 1/5 SentencePiece model on demo/corpus.txt"
python3 - "$WORK" <<'PY'
import sys, sentencepiece as spm
spm.SentencePieceTrainer.train(
    input="demo/corpus.txt", model_prefix=f"{sys.argv[1]}/demo_spm", vocab_size=1000,
    model_type="bpe", character_coverage=1.0, byte_fallback=True,
    unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
PY
SPM="$WORK/demo_spm.model"

echo "== 2/5 preprocess (lm and alpaca)"
python3 preprocess.py --corpus_path demo/corpus.txt --spm_model_path "$SPM" \
  --dataset_path "$WORK/lm_dataset" --data_processor lm --seq_length 128 --processes_num 2
python3 preprocess.py --corpus_path demo/instructions.json --spm_model_path "$SPM" \
  --dataset_path "$WORK/alpaca_dataset" --data_processor alpaca --seq_length 128

COMMON=(--deepspeed --deepspeed_config models/deepspeed_zero3_config.json --enable_zero3
        --spm_model_path "$SPM" --config_path models/llama/tiny_config.json --world_size 2
        --deepspeed_checkpoint_activations --batch_size 8 --report_steps 25)

echo "== 3/5 pre-train, 2 ranks, ZeRO-3 ($STEPS steps)"
deepspeed --num_gpus 2 pretrain.py "${COMMON[@]}" --dataset_path "$WORK/lm_dataset" \
  --data_processor lm --output_model_path "$WORK/tiny_lm" --learning_rate 3e-3 --warmup 0.05 \
  --scheduler cosine --total_steps "$STEPS" --save_checkpoint_steps "$STEPS"

echo "== 4/5 instruction-tune from it (--prefix_lm_loss)"
deepspeed --num_gpus 2 pretrain.py "${COMMON[@]}" --dataset_path "$WORK/alpaca_dataset" \
  --data_processor alpaca --prefix_lm_loss --pretrained_model_path "$WORK/tiny_lm-$STEPS" \
  --output_model_path "$WORK/tiny_sft" --learning_rate 2e-3 --total_steps 60 \
  --save_checkpoint_steps 60

if [ -f inference/generate_lm.py ]; then
  echo "== 5/5 generate"
  printf 'The cat lives near the\nEvery morning Anna\n小明在\n' > "$WORK/prompts.txt"
  python3 inference/generate_lm.py --load_model_path "$WORK/tiny_lm-$STEPS" \
    --spm_model_path "$SPM" --config_path models/llama/tiny_config.json \
    --test_path "$WORK/prompts.txt" --prediction_path "$WORK/predictions.txt" \
    --max_new_tokens 24 --top_k 1
  cat "$WORK/predictions.txt"
else
  echo "== 5/5 skipped: inference/generate_lm.py is not there"
fi
echo "done: weights $WORK/tiny_lm-$STEPS and $WORK/tiny_sft-60"
