"""Every PPO role on one frozen base (ppo_spec.md, "Roles on one frozen base").

- policy: the base plus the trainable LoRA adapter "policy";
- reference: the base with adapters disabled, or a frozen adapter "ref" when PPO starts
  from an SFT adapter (loaded a second time, frozen);
- critic: a second trainable LoRA adapter "value" on the same base plus a scalar value
  head on the last hidden state of the language model, so the critic sees the image.
  With `critic_layers=k` the adapter covers only the top k decoder layers, which the
  critic runs on its own from the reference forward's input to the first of them (the
  "trunk", cached over the rollout): its forward and backward cost k layers instead of
  the whole model and vision tower. Or, with `critic="separate"`, its own backbone; or,
  with `critic="policy"`, the value head alone on the policy's own last hidden state
  (one forward gives logits and values).

`ActorCritic` is one `nn.Module`, so accelerate/DeepSpeed wrap a single engine holding
every trainable parameter. Its `forward(role=...)` switches the active adapter. Two peft
traps shape it: `set_adapter` marks inactive adapters non-trainable (we mark them
trainable again), and activation checkpointing recomputes with whichever adapter is
active at backward time (non-reentrant checkpointing here restores each segment's own
adapter for the recompute; reentrant checkpointing is refused with the shared critic).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mmft.models.arch import decoder_stack, inner_model, output_embeddings, text_hidden_size

POLICY, VALUE, REF = "policy", "value", "ref"


class ValueHead(nn.Module):
    """Scalar head on the language model's last hidden state: [B, L, H] -> [B, L]."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        # Start from zero so initial values are 0 and early value loss does not swamp
        # the shared-base gradients (TRL's value head used a small init for the same reason).
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def response_logits(
    model: nn.Module, inputs: dict[str, torch.Tensor], prompt_length: int, response_length: int, temperature: float
) -> torch.Tensor:
    """Logits [B, R, V] that predict each response token, divided by the temperature.

    Only the last R+1 positions go through the LM head (`logits_to_keep`): the logit at
    position P-1+t predicts response token t.
    """
    out = model(**inputs, logits_to_keep=response_length + 1, use_cache=False)
    return out.logits[:, :-1, :].float() / temperature


def response_logits_and_hidden(
    model: nn.Module, inputs: dict[str, torch.Tensor], prompt_length: int, response_length: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`response_logits` and `response_hidden` of one forward: the hidden states are the
    LM head's input (the language model's last hidden state, after its final norm),
    caught by a pre-hook, so every architecture's own head code (slicing, soft-capping)
    still makes the logits."""
    caught: list[torch.Tensor] = []
    head = output_embeddings(model, "critic='policy'")
    handle = head.register_forward_pre_hook(lambda module, args: caught.append(args[0]))
    try:
        logits = response_logits(model, inputs, prompt_length, response_length, temperature)
    finally:
        handle.remove()
    if len(caught) != 1 or caught[0].shape[1] != response_length + 1:
        raise RuntimeError(f"critic='policy': expected one LM-head call on the last {response_length + 1} positions, "
                           f"got {[tuple(h.shape) for h in caught]}; this architecture needs critic='shared'.")
    return logits, caught[0][:, :-1]


def response_hidden(
    model: nn.Module, inputs: dict[str, torch.Tensor], prompt_length: int, response_length: int
) -> torch.Tensor:
    """Last hidden states [B, R, H] (`at_response`)."""
    return at_response(inner_model(model)(**inputs, use_cache=False).last_hidden_state, prompt_length, response_length)


def at_response(hidden: torch.Tensor, prompt_length: int, response_length: int) -> torch.Tensor:
    """The states [B, R, H] of a full sequence's [B, T, H] that predict the response
    tokens: the state at P-1+t predicts token t."""
    return hidden[:, prompt_length - 1: prompt_length + response_length - 1]


class ActorCritic(nn.Module):
    """Policy, reference and critic roles over one peft-wrapped VLM.

    `peft_model` must hold a trainable adapter "policy", and for the shared critic a
    trainable adapter "value"; optionally a frozen adapter "ref". `critic_model` is a
    separate backbone (a peft model with its own "value" adapter, or a plain model) for
    `critic="separate"`.
    """

    def __init__(self, peft_model: nn.Module, critic_model: nn.Module | None = None, with_critic: bool = True,
                 value_on_policy: bool = False, critic_layers: int | None = None):
        super().__init__()
        self.policy = peft_model
        self.critic_backbone = critic_model
        self.with_critic = with_critic
        # critic="policy": the value head reads the policy adapter's hidden states.
        self.value_on_policy = with_critic and value_on_policy and critic_model is None
        # The shared critic's own top layers (None: its adapter runs the whole model).
        shared = with_critic and critic_model is None and not self.value_on_policy
        self.critic_layers = critic_layers if shared and critic_layers else None
        source = critic_model if critic_model is not None else peft_model
        self.value_head = ValueHead(text_hidden_size(source.config)) if with_critic else None
        # The head stays float32 whatever the base's dtype: values feed GAE and the value loss.
        # Set by the trainer under ZeRO-3: image inputs of one blank image, run through the
        # vision tower when a batch has none, so every rank gathers the same parameters.
        self.dummy_image_inputs: dict[str, torch.Tensor] | None = None
        self._text_only_batch = False
        self.has_ref_adapter = REF in getattr(peft_model, "peft_config", {})
        self._trainable_adapters = [a for a in (POLICY, VALUE) if a in getattr(peft_model, "peft_config", {})]
        self._switched_to: str | None = None  # the adapter activate() last set (None: next switch in full)

    def enable_dummy_vision(self, image_inputs: dict[str, torch.Tensor]) -> None:
        """Under ZeRO-3, run the vision tower on `image_inputs` (one blank image) whenever a
        batch has no image. ZeRO-3 gathers each module's parameters collectively as it
        runs, so every rank must run the same modules in the same order: the dummy pass is
        a pre-hook of the language model, the point where image features are computed
        in a batch that has images (after the token embeddings, before the decoder)."""
        self.dummy_image_inputs = image_inputs
        vlm = inner_model(self.policy)
        language_model = getattr(vlm, "language_model", None) or vlm.text_model

        def hook(module, args, kwargs):
            if self._text_only_batch:
                self._text_only_batch = False
                device = next(module.parameters()).device
                with torch.no_grad():
                    vlm.get_image_features(**{k: v.to(device) for k, v in self.dummy_image_inputs.items()})

        language_model.register_forward_pre_hook(hook, with_kwargs=True)

    @property
    def config(self):
        return self.policy.config

    # Activation checkpointing is switched off for generation and back on after it
    # (TRL's unwrap_model_for_generation drives these three).
    @property
    def is_activation_checkpointing(self) -> bool:
        base = self.policy.get_base_model()
        # transformers 5 renamed it; the old name warns (FutureWarning) and goes in v6.
        if hasattr(type(base), "is_activation_checkpointing"):
            return bool(base.is_activation_checkpointing)
        return bool(base.is_gradient_checkpointing)

    is_gradient_checkpointing = is_activation_checkpointing  # the name TRL reads

    def gradient_checkpointing_disable(self) -> None:
        for model in self._backbones():
            model.get_base_model().gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Activation checkpointing that recomputes each segment with the adapter that was
        active when the segment ran forward (non-reentrant checkpointing's `context_fn`).
        Without this, one backward over the policy and value passes would recompute both
        with whichever adapter is active at backward time (ppo_spec.md, adapter traps)."""
        kwargs = dict(gradient_checkpointing_kwargs or {})
        kwargs.setdefault("use_reentrant", False)
        if kwargs["use_reentrant"] and len(self._trainable_adapters) > 1:
            raise ValueError(
                "gradient_checkpointing_kwargs={'use_reentrant': True} with the shared critic: reentrant "
                "checkpointing recomputes every segment with the adapter active at backward time, so the policy "
                "and value passes of one backward would get each other's activations (wrong gradients). Use the "
                "default non-reentrant checkpointing (it recomputes with each segment's own adapter, also under "
                "ZeRO-3), or critic='separate'.")
        if not kwargs["use_reentrant"]:
            kwargs["context_fn"] = self._checkpoint_contexts
        for model in self._backbones():
            model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            if kwargs["use_reentrant"]:
                model.enable_input_require_grads()  # reentrant checkpointing needs a grad-requiring input

    def _lora_layers(self) -> list[nn.Module]:
        """The adapter layers, found again whenever an adapter was added or removed (which
        may create layers); the next switch then runs peft's full path."""
        adapters = tuple(getattr(self.policy, "peft_config", {}))
        if getattr(self, "_lora_layer_key", None) != adapters or not hasattr(self, "_lora_layer_cache"):
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._lora_layer_cache = [m for m in self.policy.modules() if isinstance(m, BaseTunerLayer)]
            self._lora_layer_key = adapters
            self.__dict__.pop("_only_lora_layers", None)
            self._switched_to = None
        return self._lora_layer_cache

    def _checkpoint_contexts(self):
        layers = self._lora_layers()
        forward_adapter = layers[0].active_adapter if layers else None
        disabled = bool(layers) and layers[0].disable_adapters

        @contextlib.contextmanager
        def recompute():
            saved = [(m._active_adapter, m._disable_adapters) for m in layers]
            for m in layers:  # set directly: peft's set_adapter would also flip requires_grad
                m._active_adapter, m._disable_adapters = forward_adapter, disabled
            try:
                yield
            finally:
                for m, (active, off) in zip(layers, saved):
                    m._active_adapter, m._disable_adapters = active, off

        return contextlib.nullcontext(), recompute()

    def _backbones(self) -> list[nn.Module]:
        return [self.policy] + ([self.critic_backbone] if self.critic_backbone is not None else [])

    def activate(self, adapter: str) -> None:
        """Make `adapter` active; keep trainable adapters trainable (peft 0.21 freezes
        inactive ones in set_adapter) and the frozen reference frozen.

        peft's `set_adapter` walks every module and resets every adapter's trainable flag
        (about 40 ms per call on the demo model, a tenth of an iteration at four switches per
        micro-batch). Once the flags are right, switching only changes which adapter the
        LoRA layers apply: the fast path sets that directly, unless something else switched
        adapters since (a mounted reward model, a user) or the model holds adapter modules
        other than LoRA layers (modules_to_save wrappers), where the full path runs."""
        layers = self._lora_layers()
        if self._switched_to is not None and self._fast_switch_ok(layers):
            for m in layers:
                m._active_adapter = adapter
            self.policy.active_adapter = adapter
            self.policy.base_model.active_adapter = adapter
        else:
            self.policy.set_adapter(adapter)
            self.policy.set_requires_grad(self._trainable_adapters, requires_grad=True)
            if self.has_ref_adapter:
                self.policy.set_requires_grad(REF, requires_grad=False)
        self._switched_to = adapter

    def _fast_switch_ok(self, layers: list[nn.Module]) -> bool:
        if not hasattr(self, "_only_lora_layers"):
            from peft.tuners.lora import LoraLayer
            from peft.utils.other import AuxiliaryTrainingWrapper

            self._only_lora_layers = all(isinstance(m, LoraLayer) for m in layers) and not any(
                isinstance(m, AuxiliaryTrainingWrapper) for m in self.policy.modules())
        current = layers[0].active_adapter if layers else None
        current = current[0] if isinstance(current, list) and len(current) == 1 else current
        return (self._only_lora_layers and current == self._switched_to
                and not any(m.merged or m._disable_adapters for m in layers))

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: adapters disabled, or the frozen "ref" adapter."""
        if self.has_ref_adapter:
            self.activate(REF)
            try:
                yield
            finally:
                self.activate(POLICY)
            return
        layers = self._lora_layers()
        if self._switched_to is not None and self._fast_switch_ok(layers):
            # What peft's disable_adapter() does to LoRA layers, without its freezing of
            # every adapter (which the next switch would have to undo).
            for m in layers:
                m._disable_adapters = True
            try:
                yield
            finally:
                for m in layers:
                    m._disable_adapters = False
        else:
            with self.policy.disable_adapter():
                yield
            self._switched_to = None  # disable_adapter() re-froze the inactive adapters

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        prompt_length: int,
        response_length: int,
        temperature: float = 1.0,
        roles: tuple[str, ...] = (POLICY,),
        trunk: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the requested roles on one training-layout batch.

        Returns `logits` [B, R, V] for "policy" and "ref", `values` [B, R] for "value".
        With the critic on the policy, "policy" and "value" together are one forward.
        With `critic_layers`, "ref" also returns `trunk` [B, T, H], the reference's input to
        the critic's first layer, and "value" starts from `trunk` (this call's, or the one
        passed in, cached from the rollout's reference pass).
        """
        out: dict[str, torch.Tensor] = {}
        text_only = self.dummy_image_inputs is not None and "pixel_values" not in inputs
        top_inputs: list | None = None  # what the critic's layers receive, caught in a forward of this batch
        for role in roles:
            if role == VALUE and "values" in out:
                continue  # came with the policy's forward
            if role == VALUE and self.critic_layers:
                if top_inputs is None:  # no forward of this batch caught them: a reference pass gives both
                    self._text_only_batch = text_only
                    with torch.no_grad(), self.reference(), self._catch_top_inputs(True) as caught:
                        inner_model(self.policy)(**inputs, use_cache=False)
                    top_inputs, out["trunk"] = caught, caught[0][0]
                out["values"] = self._top_layer_values(trunk if trunk is not None else out["trunk"], top_inputs,
                                                       prompt_length, response_length)
                continue
            self._text_only_batch = text_only  # consumed by the dummy-vision hook, once per model call
            if role == POLICY and self.value_on_policy and VALUE in roles:
                self.activate(POLICY)
                out["logits"], hidden = response_logits_and_hidden(
                    self.policy, inputs, prompt_length, response_length, temperature)
                out["values"] = self.value_head(hidden).float()
            elif role == POLICY:
                self.activate(POLICY)
                # The critic's layer inputs, when a trunk is passed in and no reference pass here catches them.
                catch = self.critic_layers and VALUE in roles and REF not in roles and trunk is not None
                with self._catch_top_inputs(catch) as caught:
                    out["logits"] = response_logits(self.policy, inputs, prompt_length, response_length, temperature)
                top_inputs = caught or top_inputs
            elif role == REF:
                with self.reference(), self._catch_top_inputs(self.critic_layers) as caught:
                    out["ref_logits"] = response_logits(
                        self.policy, inputs, prompt_length, response_length, temperature)
                if caught:
                    top_inputs, out["trunk"] = caught, caught[0][0].detach()
            elif role == VALUE:
                if self.critic_backbone is not None:
                    hidden = response_hidden(self.critic_backbone, inputs, prompt_length, response_length)
                elif self.value_on_policy:
                    self.activate(POLICY)
                    hidden = response_hidden(self.policy, inputs, prompt_length, response_length)
                else:
                    self.activate(VALUE)
                    hidden = response_hidden(self.policy, inputs, prompt_length, response_length)
                    self.activate(POLICY)
                out["values"] = self.value_head(hidden).float()
            else:
                raise ValueError(f"Unknown role {role!r}")
        return out

    @contextlib.contextmanager
    def _catch_top_inputs(self, enabled):
        """Catch what each of the critic's layers receives in the next forward: the first
        one's hidden states and every one's keyword inputs (masks, position embeddings,
        which differ per layer in some architectures, e.g. Gemma 3's sliding and global
        layers). Yields None when not `enabled`."""
        if not enabled:
            yield None
            return
        top, _ = self._critic_stack()
        caught: list[tuple[torch.Tensor | None, dict]] = []

        def hook(module, args, kwargs):
            hidden = (args[0] if args else kwargs["hidden_states"]) if not caught else None
            caught.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))

        handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in top]
        try:
            yield caught
        finally:
            for handle in handles:
                handle.remove()

    def _top_layer_values(self, trunk: torch.Tensor, caught: list, prompt_length: int,
                          response_length: int) -> torch.Tensor:
        """Values [B, R] from the critic's own layers (the "value" adapter active), started
        from `trunk`, the reference's input to the first of them."""
        top, norm = self._critic_stack()
        if len(caught) != len(top):
            raise RuntimeError(f"critic_layers={self.critic_layers}: caught the inputs of {len(caught)} of the top "
                               f"{len(top)} decoder layers in a forward; this architecture needs "
                               "critic_layers='all'.")
        hidden = trunk.detach()
        self.activate(VALUE)
        try:
            for layer, (_, kwargs) in zip(top, caught):
                hidden = layer(hidden, **kwargs)
                hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            hidden = norm(hidden)
        finally:
            self.activate(POLICY)
        return self.value_head(at_response(hidden, prompt_length, response_length)).float()

    def _critic_stack(self) -> tuple[nn.ModuleList, nn.Module]:
        """The critic's own decoder layers (the top `critic_layers`) and the final norm."""
        layers, norm = decoder_stack(self.policy)
        return layers[len(layers) - self.critic_layers:], norm
