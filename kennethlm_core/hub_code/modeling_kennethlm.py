"""A KennethLM model for Hugging Face ``transformers``: ``AutoModelForCausalLM`` with
``trust_remote_code=True``.

Written into the model folder by ``klm export``. The network is not spelled out here: it is
built by ``kennethlm_core.model.build_model`` from the run's configuration, with the
components of the plugin distributions the run used (the config's ``klm_distributions``),
so it computes exactly what ``klm`` computes. Install them first (``pip install kennethlm``
and each ``klm-...`` distribution listed in the config).
"""

import importlib.metadata

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_kennethlm import KennethLMConfig

try:  # in a try block: transformers then leaves the message about it to us
    from kennethlm_core.config import RunConfig, resolve
    from kennethlm_core.model import build_model
    from kennethlm_core.plugins import get_registry
except ImportError:
    RunConfig = None


def check_distributions(needed):
    """Refuse, naming the pip command, when a distribution the model needs is missing."""
    missing = []
    for dist, version in needed.items():
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{dist}=={version}" if version else dist)
    if missing or RunConfig is None:
        missing = missing or ["kennethlm"]
        raise ImportError(
            "this KennethLM model is built by Python packages that are not installed: "
            f"{', '.join(missing)} (from the KennethLM repository: pip install kennethlm and "
            "the plugins/ packages it names)"
        )


class KennethLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = KennethLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        check_distributions(config.klm_distributions)
        self.klm_run_config = resolve(RunConfig.from_dict(config.klm_config), get_registry())
        self.block_size = self.klm_run_config.block_size
        self.model = build_model(self.klm_run_config, config.vocab_size, get_registry())
        for name, (shape, dtype) in config.klm_counted.items():  # counts: sized as saved
            part, _, buffer = name.rpartition(".")
            saved = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            self.model.get_submodule(part).resize({buffer: saved})
        # parameters the network shares (tied embeddings) are saved once, under the first name
        first, tied = {}, {}
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in first:
                tied[name] = first[id(p)]
            else:
                first[id(p)] = name
        self._tied_weights_keys = tied or None
        self.post_init()

    def _init_weights(self, module):
        pass  # the weights come from the checkpoint; build_model initialised the rest

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.restore_buffers()
        return model

    def restore_buffers(self):
        """transformers builds the model on the meta device and leaves the buffers that are not
        saved (causal masks, rotary tables) empty: build them again, on the CPU, and put them
        where the weights are."""
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            fresh = build_model(self.klm_run_config, self.config.vocab_size, get_registry())
        for name, module in fresh.named_modules():
            for key in module._non_persistent_buffers_set:
                if module._buffers[key] is None:  # made later, from other buffers
                    continue
                target = self.model.get_submodule(name)
                device = (
                    self.device if target._buffers[key].is_meta else target._buffers[key].device
                )
                target._buffers[key] = module._buffers[key].to(device)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "KennethLM models attend to every earlier token: padding (an attention_mask "
                "with zeros) is not supported; give one sequence, or sequences of one length"
            )
        logits, _ = self.model(input_ids)
        loss = None
        if labels is not None:  # labels are the inputs (shifted here), -100 not scored
            flat = logits[:, :-1].reshape(-1, logits.size(-1)).float()
            loss = F.cross_entropy(flat, labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # no cache: every step reads the last block_size tokens, as klm sample does
        inputs = {"input_ids": input_ids[:, -self.block_size :]}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask[:, -self.block_size :]
        return inputs

    def get_input_embeddings(self):
        return getattr(self.model, "wte", None)
