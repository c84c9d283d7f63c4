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


def biogpt_name_table(
    architecture: str, prefix: str = _PREFIX, drop: tuple[str, ...] = ()
) -> NameTable:
    """The table for one of our BioGPT module classes (`prefix`: the backbone's key prefix
    regex; `drop`: more keys to ignore)."""
    if architecture not in _HEADS:
        raise ValueError(f"no BioGPT name table for architecture {architecture!r}")
    head, head_drop, fresh = _HEADS[architecture]
    drop = (*head_drop, *drop)
    if architecture == "BioGptModel":
        return NameTable(((prefix, "", _BACKBONE),), drop=drop)
    return NameTable(((prefix, "biogpt/", _BACKBONE), ("", "", head)), drop=drop, fresh=fresh)


# fairseq's names: `decoder.` where HF has `biogpt.`; its tied output projection (the reader
# checks it equals the embedding) and its format version are dropped.
_FAIRSEQ_DROP = (r"^decoder\.output_projection\.weight$", r"^decoder\.version$")


def fairseq_biogpt_name_table(architecture: str) -> NameTable:
    """The table from a fairseq BioGPT checkpoint onto one of our BioGPT module classes."""
    return biogpt_name_table(architecture, prefix=r"decoder\.", drop=_FAIRSEQ_DROP)
