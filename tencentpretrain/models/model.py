"""The model: embedding -> encoder -> [decoder] -> targets, each built from its registry
by the name the config gives it.

Submodule names match TencentPretrain checkpoints: ``embedding.word.*``,
``encoder.transformer.N.*``, ``encoder.layer_norm.*``, ``target.lm.*``; a decoder-only
config builds no decoder (its state dict is exactly that). ``models/layout.py`` owns
these names for everything outside the model code.
"""
import torch
import torch.nn as nn

from tencentpretrain.decoders import str2decoder
from tencentpretrain.embeddings import str2embedding
from tencentpretrain.embeddings.embedding import Embedding
from tencentpretrain.encoders import str2encoder
from tencentpretrain.models import layout
from tencentpretrain.targets import str2target


class Model(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = Embedding(config, vocab_size, str2embedding)
        self.encoder = str2encoder[config.encoder](config)
        self.decoder = str2decoder[config.decoder](config) if config.decoder else None
        self.target = nn.Module()
        for name in config.target:
            self.target.add_module(name, str2target[name](config, vocab_size))
        if config.tie_weights:
            layout.tie_weights(self)

    def forward(self, input_ids, labels=None, loss_mask=None, seg=None, position_ids=None,
                key_mask=None, kv_cache=None, isolate_segments=False, tgt_ids=None):
        """What the target returns: logits [batch, seq, vocab], or (loss_sum,
        counted_tokens) when labels are given (a list, one per target, if there are several).

        seg: document number per token (0 = padding) for ``causal_document`` masks.
        isolate_segments: packed examples; each attends and is positioned as if alone.
        position_ids / key_mask / kv_cache: incremental decoding of left-padded batches.
        tgt_ids: the decoder's input (encoder-decoder configs, T5): ``input_ids`` is the
        source (``seg`` > 0 or ``key_mask`` marks its real tokens), labels the target.
        """
        if tgt_ids is not None:
            memory = self.encode(input_ids, seg=seg, key_mask=key_mask)
            return self.decode(memory, tgt_ids, seg=seg, key_mask=key_mask, labels=labels,
                               loss_mask=loss_mask)
        hidden = self.hidden_states(input_ids, seg, position_ids, key_mask, kv_cache,
                                    isolate_segments)
        return self.targets(hidden, labels, loss_mask)

    def hidden_states(self, input_ids, seg=None, position_ids=None, key_mask=None,
                      kv_cache=None, isolate_segments=False):
        """Decoder-only configs: the last hidden states [batch, seq, hidden], before the
        targets (scoring a few positions needs no logits for the rest)."""
        hidden = self.embedding(input_ids, position_ids, seg)
        hidden = self.encoder(hidden, seg=seg, position_ids=position_ids, key_mask=key_mask,
                              kv_cache=kv_cache, isolate_segments=isolate_segments)
        return hidden if self.decoder is None else self.decoder(hidden, seg=seg)

    def targets(self, hidden, labels=None, loss_mask=None):
        """Every configured target on ``hidden``, through the registry's modules."""
        outputs = [target(hidden, labels, loss_mask) for target in self.target.children()]
        return outputs[0] if len(outputs) == 1 else outputs

    def encode(self, input_ids, seg=None, key_mask=None):
        """Encoder-decoder: the encoder's output for the source ids (run once per source)."""
        return self.encoder(self.embedding(input_ids, None, seg), seg=seg, key_mask=key_mask)

    def decode(self, memory, tgt_ids, seg=None, key_mask=None, kv_cache=None, labels=None,
               loss_mask=None):
        """Encoder-decoder: the targets on the decoder's output for ``tgt_ids`` over
        ``memory``; the decoder's input is embedded by the shared (encoder's) embedding.
        kv_cache: the decoder's ``new_cache`` (incremental decoding)."""
        if key_mask is None and seg is not None:
            key_mask = seg > 0
        hidden = self.decoder(memory, tgt=self.embedding(tgt_ids), memory_mask=key_mask,
                              kv_cache=kv_cache)
        return self.targets(hidden, labels, loss_mask)

    @torch.no_grad()
    def init_weights(self, std=0.02, config=None):
        """GPT/LLaMA initialisation for training from scratch: N(0, std) matrices,
        zero biases, unit norms. Loading a checkpoint overwrites all of it. T5 configs
        (a decoder, relative position bias, no attention scale) get T5's own (models/t5_init.py).
        ``self`` may be one block of the model (ZeRO-3 initialises block by block): then
        ``config`` is the model's."""
        from tencentpretrain.models.t5_init import init_t5_weights, is_t5_config
        config = config or getattr(self, "config", None)
        if config is not None and is_t5_config(config):
            init_t5_weights(self, config)
            return
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if "layer_norm" in name:
                nn.init.ones_(param) if name.endswith("weight") else nn.init.zeros_(param)
