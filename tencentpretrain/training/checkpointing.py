"""The save layout of a run, and what a run was started from (checked on resume).

By concern: ZeRO-3 weight gather/scatter is zero3_weights.py's, the trainer's resumable state
(one ``TrainState``) train_state.py's; this module names and lays out the saves. Two kinds of
output, both written so that a save killed halfway never loads:

- consolidated weights ``<output_model_path>-<step>``: one plain state dict that
  ``tencentpretrain.load_model``, inference and the HF export read directly (no
  ``zero_to_fp32``). Under ZeRO-3 it is gathered one parameter at a time.
- a resumable checkpoint ``<output_model_path>.checkpoints/<tag>/``: the backend's own
  files (DeepSpeed's layout under DeepSpeed) plus ``trainer_state_rank<R>.json`` per rank
  (step, data position, RNG states). The ``latest`` file naming the tag is written
  last, atomically, so resuming always finds a complete save.
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.train_state import TrainState
from tencentpretrain.training.zero3_weights import (  # noqa: F401 (the trainer's and tests' names)
    consolidated_state_dict, init_weights, load_weights, open_pretrained, save_weights)
from tencentpretrain.utils.files import atomic_path, write_text_atomic

LATEST = "latest"


def weights_path(output_model_path, step):
    return f"{output_model_path}-{step}"


def checkpoints_dir(output_model_path):
    return f"{output_model_path}.checkpoints"


def tag_of(step):
    return f"global_step{step}"  # DeepSpeed's default tag


def step_of(tag):
    """The step of a tag written by ``tag_of``, else None (``latest``, universal copies...)."""
    match = re.fullmatch(r"global_step(\d+)", tag)
    return int(match.group(1)) if match else None


def publish_final(weights_file, output_model_path):
    """The last weights also at ``output_model_path`` itself, the name a next stage can use
    without knowing the step (a hard link where the file system allows, else a copy)."""
    with atomic_path(output_model_path) as tmp:
        try:
            os.link(weights_file, tmp)
        except OSError:
            shutil.copyfile(weights_file, tmp)


_TEMPORARY = re.compile(r".+\.tmp-(\d+)")


def remove_stale_temporaries(output_model_path):
    """Delete the temporary files (``NAME.tmp-PID``) a killed save left beside the outputs and
    in the checkpoint folders, when process PID is gone; a live run's are left alone."""
    directory = checkpoints_dir(output_model_path)
    folders = [os.path.dirname(os.path.abspath(output_model_path)), directory]
    if os.path.isdir(directory):
        folders += [os.path.join(directory, name) for name in os.listdir(directory)]
    removed = []
    for folder in filter(os.path.isdir, folders):
        for name in os.listdir(folder):
            match = _TEMPORARY.fullmatch(name)
            if match and not _alive(int(match.group(1))):
                path = os.path.join(folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                removed.append(path)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def prune_saves(output_model_path, keep, newest_step):
    """Keep the ``keep`` newest complete saves (resumable folder and weights file) up to
    ``newest_step``, which ``latest`` already names; delete older ones. Called only after a
    save completed, so a kill at any point leaves at least ``keep`` complete saves."""
    directory = checkpoints_dir(output_model_path)
    outputs = os.path.dirname(os.path.abspath(output_model_path))
    steps = sorted(step for step in map(step_of, os.listdir(directory))
                   if step is not None and step <= newest_step)
    for step in steps[:-keep]:
        for name in (tag_of(step), universal_tag(tag_of(step))):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        weights = os.path.basename(weights_path(output_model_path, step))
        for name in os.listdir(outputs):  # OUT-STEP, and OUT-STEP.safetensors/.json adapters
            if name == weights or name.startswith(weights + "."):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(outputs, name))


def universal_tag(tag):
    return f"{tag}_universal"


def make_universal(directory, tag, say=print):
    """Convert DeepSpeed's per-rank ZeRO files of ``tag`` to its universal checkpoint (one
    folder per parameter with fp32 weights and Adam moments), which loads on any number of
    ranks. Done once, into a temporary folder renamed when complete; the original stays."""
    target = os.path.join(directory, universal_tag(tag))
    if os.path.isdir(target):
        return target
    source = os.path.join(directory, tag)
    if not any(name.endswith("optim_states.pt") for name in os.listdir(source)):
        raise TrainingError(f"--resume_from_checkpoint {directory}: {source} has no DeepSpeed "
                            "optimizer states (saved by the one-process backend?); resume it "
                            "with the number of ranks that saved it")
    tmp = f"{target}.tmp-{os.getpid()}"
    say(f"converting {source} to DeepSpeed's universal checkpoint {target}")
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
               source, "--output_folder", tmp, "--num_extract_workers", "1",
               "--num_merge_workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise TrainingError(f"--resume_from_checkpoint {directory}: DeepSpeed could not convert "
                            f"{source} for another number of ranks: {lines[-1]}")
    for name in os.listdir(source):  # our per-rank trainer state goes along
        if name.startswith("trainer_state_rank"):
            shutil.copy2(os.path.join(source, name), os.path.join(tmp, name))
    os.replace(tmp, target)
    return target


def write_latest(directory, tag):
    write_text_atomic(os.path.join(directory, LATEST), tag)


def read_latest(directory):
    path = os.path.join(directory, LATEST)
    if not os.path.isfile(path):
        raise TrainingError(f"--resume_from_checkpoint {directory}: no '{LATEST}' file (no "
                            "complete save in it)")
    with open(path, encoding="utf-8") as f:
        tag = f.read().strip()
    if not tag or not os.path.isdir(os.path.join(directory, tag)):
        raise TrainingError(f"--resume_from_checkpoint {directory}: '{LATEST}' names {tag!r}, "
                            "which is not a folder there")
    return tag


# ---- what a run was started from, recorded in every save and checked on resume ----

# meta.json fields that make a dataset's samples what they are (preprocess.py writes them)
DATASET_FIELDS = ("format_version", "data_processor", "seq_length", "packed", "vocab_size",
                  "tokenizer_sha256", "corpus_file", "seed", "num_samples", "num_tokens",
                  "num_documents", "prompt_template")


def config_record(config):
    """The resolved model config as JSON values (what the weights' shapes follow)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name != "source"}
    return json.loads(json.dumps(values))


def dataset_record(dataset_path, meta):
    return {"path": dataset_path, **{key: meta[key] for key in DATASET_FIELDS if key in meta}}


def run_record(config_path, config, vocab_size, lora, base_path, base_fp, seed, dataset_path,
               meta):
    """What a run was started from, saved in ``trainer_state_rank<R>.json`` (plain JSON):
    the model config and vocabulary, the LoRA settings (None: full training), the base
    (its file and fingerprint, or the seed of a random one) and the dataset's identity."""
    return {"config_path": config_path, "model_config": config_record(config),
            "vocab_size": vocab_size, "lora": lora.to_dict() if lora is not None else None,
            "base": {"path": base_path, "fingerprint": base_fp, "seed": seed},
            "dataset": dataset_record(dataset_path, meta)}


def saved_world_size(directory):
    """How many ranks wrote the latest save of ``directory``."""
    return TrainState.load(directory, read_latest(directory), 0).world_size


def saved_run(directory, rank):
    """The run record of the latest save of ``directory``; None for saves made before
    checkpoints recorded it."""
    return TrainState.load(directory, read_latest(directory), rank).run


def _lora_options(lora):
    options = f"--use_lora --lora_r {lora['r']} --lora_alpha {lora['alpha']:g} " \
              f"--lora_target_modules {','.join(lora['targets'])}"
    if lora.get("modules_to_save"):
        options += f" --lora_modules_to_save {','.join(lora['modules_to_save'])}"
    return options


def _first_difference(saved, current, keys):
    """(key, saved value, current value) of the first key both hold with other values; a key
    one side lacks (recorded by another version) is not compared."""
    return next(((key, saved[key], current[key]) for key in keys
                 if key in saved and key in current and saved[key] != current[key]), None)


def explain_weights_mismatch(directory, error):
    """torch's multi-line state-dict error, met resuming a save that recorded no run (nothing
    was checked before loading), as one line: the checkpoint's kind against --use_lora, or the
    first tensor that does not fit."""
    text = str(error)

    def keys(kind):  # the names torch lists after "Missing key(s)" / "Unexpected key(s)"
        listed = re.search(kind + r" key\(s\) in state_dict: ([^\n]*)", text)
        return re.findall(r'"([^"]+)"', listed.group(1)) if listed else []

    missing, unexpected = keys("Missing"), keys("Unexpected")
    name = f"--resume_from_checkpoint {directory}"
    if any("lora_" in key for key in unexpected):
        return (f"{name}: the checkpoint holds LoRA adapters on a frozen base, not a full model; "
                "resume it with --use_lora and the --lora_* settings it was trained with")
    if any("lora_" in key for key in missing):
        return (f"{name}: the checkpoint holds full-model training, no LoRA adapters; resume it "
                "without --use_lora")
    size = re.search(r"size mismatch for ([^:]+): .*? shape (torch.Size\(\[[^]]*\]\)) from "
                     r"checkpoint, the shape in current model is (torch.Size\(\[[^]]*\]\))", text)
    if size:
        return (f"{name}: its {size.group(1)} has shape {size.group(2)}, this run's model "
                f"{size.group(3)}; resume with the checkpoint's --config_path")
    details = text.splitlines()[1:] or [text]
    first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
             else details[0].strip())
    return (f"{name}: its weights do not fit this run's model ({first}); resume with the "
            "checkpoint's --config_path and LoRA options")


def check_resumed_model(directory, saved, config_path, config, use_lora):
    """Before anything is built: the checkpoint's kind (LoRA or full) and model config
    against this run's options."""
    name = f"--resume_from_checkpoint {directory}"
    if saved["lora"] is not None and not use_lora:
        raise TrainingError(f"{name}: the checkpoint holds LoRA adapters on a frozen base, not "
                            f"a full model; resume it with {_lora_options(saved['lora'])} (its "
                            "settings), or merge its adapter (scripts/merge_lora.py) to train "
                            "the whole model")
    if saved["lora"] is None and use_lora:
        step = step_of(read_latest(directory))
        weights = weights_path(os.path.normpath(directory).removesuffix(".checkpoints"),
                               step if step is not None else "STEP")
        raise TrainingError(f"{name}: the checkpoint holds full-model training, no LoRA "
                            f"adapters; resume it without --use_lora, or start a new LoRA run "
                            f"on its weights (--pretrained_model_path {weights})")
    current = config_record(config)
    diff = _first_difference(saved["model_config"], current, list(current))
    if diff:
        key, was, now = diff
        raise TrainingError(f"{name}: saved with model config {saved['config_path']} ({key} "
                            f"{json.dumps(was)}), --config_path {config_path} has {key} "
                            f"{json.dumps(now)}; resume with the checkpoint's config")


def check_resumed_inputs(directory, saved, current, allow_changed_base=False,
                         allow_changed_dataset=False, say=print):
    """Once the inputs are open: vocabulary, LoRA settings, the base a LoRA run trains on
    (its weights are not in the checkpoint) and the dataset, each against the record."""
    name = f"--resume_from_checkpoint {directory}"
    if saved["vocab_size"] != current["vocab_size"]:
        raise TrainingError(f"{name}: saved with a vocabulary of {saved['vocab_size']}, this "
                            f"run's (tokenizer or --pretrained_model_path) is "
                            f"{current['vocab_size']}")
    if saved["lora"] is not None:
        diff = _first_difference(saved["lora"], current["lora"],
                                 ("r", "alpha", "targets", "modules_to_save"))
        if diff:
            key, was, now = diff
            raise TrainingError(f"{name}: the checkpoint's adapters have {key} {was}, this run "
                                f"asks for {now}; resume with {_lora_options(saved['lora'])}")
        line = _changed_base(saved["base"], current["base"])
        if line and not allow_changed_base:
            raise TrainingError(f"{name}: {line}; pass that base, or --allow_changed_base to "
                                "train these adapters on this one")
        if line:
            say(f"note: {line}; continuing on it (--allow_changed_base)")
    dataset = _first_difference(saved["dataset"], current["dataset"], DATASET_FIELDS)
    if dataset:
        key, was, now = dataset
        line = (f"the run trained on {saved['dataset']['path']} ({key} {was}), --dataset_path "
                f"{current['dataset']['path']} has {key} {now}")
        if not allow_changed_dataset:
            raise TrainingError(f"{name}: {line}, so the saved data position means other "
                                "samples; pass that dataset, or --allow_changed_dataset to "
                                "continue on this one")
        say(f"note: {line}; continuing on it from the saved position (--allow_changed_dataset)")


def _describe_base(base):
    if base["fingerprint"] is None:
        return f"a random base (--seed {base['seed']})"
    return f"base {base['path']} (fingerprint {base['fingerprint'][:12]})"


def _changed_base(saved, current):
    """A LoRA run's base differs from the saved run's: what differs, else None."""
    if saved["fingerprint"] == current["fingerprint"] and (
            saved["fingerprint"] is not None or saved["seed"] == current["seed"]):
        return None
    if current["fingerprint"] is None and saved["fingerprint"] is not None:
        return (f"the adapters were trained on {_describe_base(saved)}; without "
                "--pretrained_model_path they would train on a random base")
    now = (f"--seed {current['seed']} makes another random base" if current["fingerprint"] is None
           else f"--pretrained_model_path {current['path']} is another (fingerprint "
                f"{current['fingerprint'][:12]})")
    return f"the adapters were trained on {_describe_base(saved)}, {now}"
