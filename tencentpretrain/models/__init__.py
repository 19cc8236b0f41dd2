from tencentpretrain.models.model import Model

__all__ = ["Model"]
