"""RMSNorm (LLaMA): normalised in float32 whatever the activation dtype, as Meta does."""
import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # NVIDIA apex, only when really installed (PyPI's "apex" is an unrelated package)
    from apex.normalization import FusedRMSNorm as _ApexRMSNorm
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _ApexRMSNorm = None


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x):
        if _ApexRMSNorm is not None and x.is_cuda:
            return _apex_rms_norm(x, self.weight, self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def _apex_rms_norm(x, weight, eps):
    from apex.normalization.fused_layer_norm import fused_rms_norm_affine
    return fused_rms_norm_affine(x, weight, weight.shape, eps)
