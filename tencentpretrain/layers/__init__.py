"""Layer registries: config string -> class (or function)."""
from tencentpretrain.layers.activations import str2act
from tencentpretrain.layers.gated_feed_forward import GatedFeedForward
from tencentpretrain.layers.layer_norm import LayerNorm
from tencentpretrain.layers.position_ffn import PositionwiseFeedForward
from tencentpretrain.layers.rms_norm import RMSNorm

str2layernorm = {"rms": RMSNorm, "normal": LayerNorm}
str2feedforward = {"gated": GatedFeedForward, "dense": PositionwiseFeedForward}
LAYERNORM_POSITIONS = ("pre", "post")  # a choice the layers read, not a registry of classes

__all__ = ["str2act", "str2layernorm", "str2feedforward", "LAYERNORM_POSITIONS"]
