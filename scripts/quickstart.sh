#!/usr/bin/env bash
# Quick start on a CPU machine, minutes end to end: train a SentencePiece model on the demo
# text, preprocess lm and alpaca datasets, pre-train the tiny LLaMA with 2-rank DeepSpeed
# ZeRO-3, instruction-tune it, and chat with it. `make quickstart` installs what is missing
# first.
#   bash scripts/quickstart.sh [WORK_DIR]      (default: quickstart/)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-quickstart}
STEPS=${QUICKSTART_STEPS:-120}
SFT_STEPS=${QUICKSTART_SFT_STEPS:-90}
mkdir -p "$WORK"

started=$SECONDS
stage() { echo "== $1   [$((SECONDS - started)) s so far]"; }

stage "1/5 SentencePiece model on demo/corpus.txt (identity normalization, as LLaMA's)"
SPM="$WORK/demo_spm.model"
python3 scripts/train_tokenizer.py --corpus_path demo/corpus.txt --vocab_size 1000 \
  --output_spm_model_path "$SPM"

stage "2/5 preprocess (lm and alpaca)"
python3 preprocess.py --corpus_path demo/corpus.txt --spm_model_path "$SPM" \
  --dataset_path "$WORK/lm_dataset" --data_processor lm --seq_length 128 --processes_num 2
# 256 tokens hold the longest demo example (183 with the prompt template): none is cut
python3 preprocess.py --corpus_path demo/instructions.json --spm_model_path "$SPM" \
  --dataset_path "$WORK/alpaca_dataset" --data_processor alpaca --seq_length 256

# --log_level warning: the launcher's own info lines (its command, spawned processes) go.
# --deepspeed_checkpoint_activations is what a 7B run adds to fit in memory: it recomputes each
# layer in the backward pass, which on this tiny model only halves tokens/s; the quick start
# leaves it out (CHECKPOINT_ACTIVATIONS=1 puts it back).
COMMON=(--deepspeed --deepspeed_config models/deepspeed_zero3_config.json --enable_zero3
        --spm_model_path "$SPM" --config_path models/llama/tiny_config.json --world_size 2
        --batch_size 8 --report_steps 25 --save_total_limit 1)
if [ "${CHECKPOINT_ACTIVATIONS:-0}" = 1 ]; then COMMON+=(--deepspeed_checkpoint_activations); fi

stage "3/5 pre-train, 2 ranks, ZeRO-3 ($STEPS steps)"
deepspeed --log_level warning --num_gpus 2 pretrain.py "${COMMON[@]}" --dataset_path "$WORK/lm_dataset" \
  --data_processor lm --output_model_path "$WORK/tiny_lm" --learning_rate 3e-3 --warmup 0.05 \
  --scheduler cosine --total_steps "$STEPS" --save_checkpoint_steps 60 \
  --tensorboard_dir "$WORK/runs/pretrain"

stage "4/5 instruction-tune the pre-trained weights (--prefix_lm_loss: answers only)"
deepspeed --log_level warning --num_gpus 2 pretrain.py "${COMMON[@]}" --dataset_path "$WORK/alpaca_dataset" \
  --data_processor alpaca --prefix_lm_loss --pretrained_model_path "$WORK/tiny_lm" \
  --output_model_path "$WORK/tiny_sft" --learning_rate 2e-3 --total_steps "$SFT_STEPS" \
  --save_checkpoint_steps "$SFT_STEPS" --tensorboard_dir "$WORK/runs/sft"

stage "5/5 chat with the instruction-tuned model (alpaca prompt template, greedy)"
printf '%s\n' 'What is five plus three?' '“马”用英语怎么说？' 'What is three plus four?' \
  '“熊”用英语怎么说？' > "$WORK/questions.txt"
python3 inference/generate_lm.py --load_model_path "$WORK/tiny_sft" --spm_model_path "$SPM" \
  --config_path models/llama/tiny_config.json --prompt_template alpaca --greedy \
  --test_path "$WORK/questions.txt" --prediction_path "$WORK/answers.txt" --max_new_tokens 32
paste -d '\n' "$WORK/questions.txt" "$WORK/answers.txt" | while IFS= read -r q && IFS= read -r a; do
  printf '  %-28s -> %s\n' "$q" "$a"
done

cat <<DONE

Done in $((SECONDS - started)) s. Everything is in $WORK/:
  tokenizer        $SPM
  datasets         $WORK/lm_dataset  $WORK/alpaca_dataset
  weights          $WORK/tiny_lm (pre-trained)  $WORK/tiny_sft (instruction-tuned)
  checkpoints      $WORK/tiny_lm.checkpoints  $WORK/tiny_sft.checkpoints (newest kept)
  TensorBoard      tensorboard --logdir $WORK/runs
Continue:
  chat             python3 inference/generate_lm.py --load_model_path $WORK/tiny_sft \\
                     --spm_model_path $SPM --config_path models/llama/tiny_config.json \\
                     --prompt_template alpaca --interactive
  train longer     add --resume_from_checkpoint $WORK/tiny_lm.checkpoints and a larger --total_steps
DONE
