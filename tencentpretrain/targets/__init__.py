"""Target registry: config string -> class."""
from tencentpretrain.targets.lm_target import LmTarget

str2target = {"lm": LmTarget}
