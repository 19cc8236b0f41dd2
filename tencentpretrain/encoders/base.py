"""The encoder interface: all that the trainer, checkpointing, LoRA and the layout module
(``models/layout.py``) may ask of an encoder, and of a decoder, which implements it too.

- ``layers()``: the repeated blocks in order (LoRA looks for its target linears in each,
  ``--compile`` compiles each, ZeRO-3 initialises one at a time);
- ``final_norm()``: the norm applied after the last layer, or None;
- ``shared_modules()``: modules every layer uses (T5's relative position bias), or [];
- ``enable_activation_checkpointing(layers_per_checkpoint, checkpoint_fn)``: from then on
  recompute every group of that many layers in backward while training.

A module named in a config's ``"encoder"`` is built as ``cls(config)`` and called as
``encoder(hidden, seg=, position_ids=, key_mask=, kv_cache=, isolate_segments=)`` ->
hidden states [batch, seq, hidden].
"""
import torch
import torch.nn as nn
import torch.utils.checkpoint


def torch_checkpoint(function, *args):
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.checkpoint_layers_num = 0
        self.checkpoint_fn = torch_checkpoint

    def layers(self):
        raise NotImplementedError(f"{type(self).__name__}.layers()")

    def final_norm(self):
        return None

    def shared_modules(self):
        return []

    def enable_activation_checkpointing(self, layers_per_checkpoint=1, checkpoint_fn=None):
        """Recompute every group of ``layers_per_checkpoint`` layers in backward.

        ``checkpoint_fn(function, *tensors)`` defaults to torch's non-reentrant
        checkpoint; pretrain.py passes DeepSpeed's under ``--deepspeed``.
        """
        self.checkpoint_layers_num = max(1, int(layers_per_checkpoint))
        if checkpoint_fn is not None:
            self.checkpoint_fn = checkpoint_fn

    def checkpointing(self):
        """Whether this forward recomputes its layers in backward."""
        return bool(self.checkpoint_layers_num) and self.training and torch.is_grad_enabled()

    def checkpointed(self, hidden, mask, call, *inputs):
        """``hidden`` through ``layers()`` in checkpointed groups: ``call(layer, x, mask,
        *inputs)`` runs one layer. ``inputs`` (tensors, e.g. the decoder's memory) and a mask
        carrying a trained bias (T5's relative positions) are checkpoint arguments, so a
        reentrant checkpoint (DeepSpeed's) returns their gradients per group instead of running
        backward through their graph once per group."""
        layers, group = list(self.layers()), self.checkpoint_layers_num
        trained = torch.is_tensor(mask) and mask.requires_grad
        for start in range(0, len(layers), group):
            def run(x, *args, chunk=layers[start:start + group]):
                layer_mask, args = (args[-1], args[:-1]) if trained else (mask, args)
                for layer in chunk:
                    x = call(layer, x, layer_mask, *args)
                return x
            hidden = self.checkpoint_fn(run, hidden, *inputs, *((mask,) if trained else ()))
        return hidden
