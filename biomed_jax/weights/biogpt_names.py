"""The BioGPT name table: HF `modeling_biogpt` keys -> our parameter paths."""

from __future__ import annotations

from biomed_jax.weights.names import NameTable, Rule

_BACKBONE = (
    Rule("embed_tokens.weight", "embed_tokens/embedding"),
    Rule("embed_positions.weight", "embed_positions/embedding"),
    Rule("layer_norm.weight", "layer_norm/scale"),
    Rule("layer_norm.bias", "layer_norm/bias"),
    *(
        rule
        for hf, ours in (
            ("self_attn.q_proj", "self_attn/query"),
            ("self_attn.k_proj", "self_attn/key"),
            ("self_attn.v_proj", "self_attn/value"),
            ("self_attn.out_proj", "self_attn/out"),
            ("fc1", "mlp/fc_in"),
            ("fc2", "mlp/fc_out"),
        )
        for rule in (
            Rule(f"layers.{{i}}.{hf}.weight", f"layers/layer/{ours}/kernel", transpose=True),
            Rule(f"layers.{{i}}.{hf}.bias", f"layers/layer/{ours}/bias"),
        )
    ),
    *(
        rule
        for name in ("self_attn_layer_norm", "final_layer_norm")
        for rule in (
            Rule(f"layers.{{i}}.{name}.weight", f"layers/layer/{name}/scale"),
            Rule(f"layers.{{i}}.{name}.bias", f"layers/layer/{name}/bias"),
        )
    ),
)
_PREFIX = r"(?:biogpt\.)?"
# The LM head is tied to embed_tokens (HF may or may not save the copy).
_TIED_HEAD = (r"^output_projection\.weight$",)
_HEADS = {
    "BioGptModel": ((), (*_TIED_HEAD, r"^score\.", r"^classifier\."), ()),
    "BioGptForCausalLM": ((), _TIED_HEAD, ()),
    "BioGptForSequenceClassification": (
        (Rule("score.weight", "score/kernel", transpose=True),),
        (*_TIED_HEAD, r"^classifier\."),
        ("score/",),
    ),
    "BioGptForTokenClassification": (
        (
            Rule("classifier.weight", "classifier/kernel", transpose=True),
            Rule("classifier.bias", "classifier/bias"),
        ),
        (*_TIED_HEAD, r"^score\."),
        ("classifier/",),
    ),
}


def biogpt_name_table(architecture: str) -> NameTable:
    """The table for one of our BioGPT module classes."""
    if architecture not in _HEADS:
        raise ValueError(f"no BioGPT name table for architecture {architecture!r}")
    head, drop, fresh = _HEADS[architecture]
    if architecture == "BioGptModel":
        return NameTable(((_PREFIX, "", _BACKBONE),), drop=drop)
    return NameTable(((_PREFIX, "biogpt/", _BACKBONE), ("", "", head)), drop=drop, fresh=fresh)
