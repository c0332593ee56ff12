"""Parameter-efficient tuning (PET) of a frozen backbone: LoRA, Adapter and Prefix
behind one interface (see `perennial.pet.base` for the design).

    shapes = inject(backbone.encoder, config)   # wrap target layers once
    module = create_module(config, shapes)      # one adapter's weights (nn.Module)
    with activate(module):                      # the backbone now runs with them
        features = backbone(batch)

Adapter-only persistence: `module.state_dict()` (safetensors) plus
`config.to_dict()` (JSON); `config_from_dict` rebuilds the config.
"""

from perennial.pet.adapter import AdapterConfig, AdapterModule
from perennial.pet.base import (
    METHODS,
    PETConfig,
    PETModule,
    activate,
    config_from_dict,
    create_module,
    inject,
)
from perennial.pet.lora import LoRAConfig, LoRAModule
from perennial.pet.prefix import PrefixConfig, PrefixModule

__all__ = [
    "METHODS",
    "AdapterConfig",
    "AdapterModule",
    "LoRAConfig",
    "LoRAModule",
    "PETConfig",
    "PETModule",
    "PrefixConfig",
    "PrefixModule",
    "activate",
    "config_from_dict",
    "create_module",
    "inject",
]
