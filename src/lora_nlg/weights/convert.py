"""``lora_export.py``: move LoRA adapters between this project, Hugging Face PEFT, plain transformers
and upstream (microsoft/LoRA).

    python src/lora_export.py export peft   CKPT OUT_DIR [--base_model NAME] [--integer_alpha]
    python src/lora_export.py export merged CKPT OUT_DIR [--pretrained PATH]
    python src/lora_export.py import peft   ADAPTER_DIR OUT [--model_card CARD] [--pretrained PATH]
    python src/lora_export.py import upstream FILE.pt OUT --lora_dim R --lora_alpha A --model_card CARD

CKPT is one of our adapters: a checkpoint folder (``work_dir/checkpoints/<name>``) or its
``adapter.safetensors``. ``export peft`` writes ``adapter_config.json`` +
``adapter_model.safetensors`` for ``peft.PeftModel.from_pretrained(GPT2LMHeadModel...)``;
``export merged`` writes ``config.json`` + ``model.safetensors`` for
``GPT2LMHeadModel.from_pretrained`` (the backbone is the adapter's ``init_checkpoint`` unless
``--pretrained`` says otherwise). ``import`` writes our adapter file OUT (``.safetensors``) that
``gpt2_beam.py`` decodes. The conversions are exact; see ``lora_nlg/weights/peft.py`` for the
mapping of the fused c_attn and for what PEFT cannot express. Exit status 1 with a message on
any file that does not convert.
"""

import argparse
import os
import sys

from lora_nlg.cli import PROG_ENV, run_program
from lora_nlg.methods import SCALING_RULES
from lora_nlg.model import GPT2_SIZES
from lora_nlg.weights.adapter import read_adapter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=os.environ.get(PROG_ENV) or "lora_export.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = p.add_subparsers(dest="direction", required=True)

    export = direction.add_parser("export", help="our adapter -> PEFT folder or merged GPT-2 folder")
    fmt = export.add_subparsers(dest="format", required=True)
    peft = fmt.add_parser("peft", help="a PEFT LoRA adapter folder")
    peft.add_argument("ckpt", help="our checkpoint folder or adapter .safetensors")
    peft.add_argument("out", help="output folder")
    peft.add_argument(
        "--base_model", default=None, help="base_model_name_or_path to record (default: the Hub name of the model card)"
    )
    peft.add_argument(
        "--integer_alpha",
        action="store_true",
        help="require an integer lora_alpha (for tools that read it as int); fail if the scale needs a fraction",
    )
    merged = fmt.add_parser("merged", help="a plain Hugging Face GPT-2 folder with LoRA merged in")
    merged.add_argument("ckpt", help="our checkpoint folder or adapter .safetensors")
    merged.add_argument("out", help="output folder")
    merged.add_argument(
        "--pretrained",
        default=None,
        help="the backbone (Hugging Face folder or weights file); default: the adapter's init_checkpoint",
    )

    imp = direction.add_parser("import", help="PEFT folder or upstream .pt -> our adapter")
    fmt = imp.add_subparsers(dest="format", required=True)
    peft = fmt.add_parser("peft", help="a PEFT LoRA adapter folder for GPT-2")
    peft.add_argument("adapter_dir", help="folder with adapter_config.json and adapter_model.safetensors")
    peft.add_argument("out", help="our adapter file to write (.safetensors)")
    peft.add_argument(
        "--model_card",
        choices=sorted(GPT2_SIZES),
        default=None,
        help="GPT-2 size (default: from the adapter's base model or the tensors' width)",
    )
    peft.add_argument(
        "--pretrained", default=None, help="backbone folder whose config.json gives the model's shape (custom sizes)"
    )
    up = fmt.add_parser("upstream", aliases=["seed"], help="a microsoft/LoRA examples/NLG checkpoint (.pt)")
    up.add_argument("upstream_ckpt", help="upstream's .pt ({'model_state_dict': ...}, module. keys)")
    up.add_argument("out", help="our adapter file to write (.safetensors)")
    up.add_argument("--lora_dim", type=int, required=True, help="r the checkpoint was trained with (the paper: 4)")
    up.add_argument(
        "--lora_alpha",
        type=float,
        required=True,
        help="alpha it was trained with (the paper's recipes: 32; upstream's model default: 128)",
    )
    up.add_argument(
        "--model_card",
        choices=sorted(GPT2_SIZES),
        required=True,
        help="GPT-2 size it was trained on (gpt2_md_lora_e2e.pt: gpt2.md)",
    )
    up.add_argument(
        "--lora_scaling_rule", choices=list(SCALING_RULES), default="alpha/r", help="upstream's rule is alpha/r"
    )
    up.add_argument("--lora_dropout", type=float, default=0.0, help="recorded only (decoding uses none)")
    return p


def run(args) -> str:
    if args.direction == "export" and args.format == "peft":
        from lora_nlg.weights.peft import export_peft

        config = export_peft(args.ckpt, args.out, args.base_model, args.integer_alpha)
        ours = read_adapter(args.ckpt)[2]
        n = sum(t in ("q", "k", "v") for t in ours.targets)
        why = ""
        if n > 1:  # PEFT cannot put LoRA on slices of c_attn
            why = (
                f" (ours: r={ours.r}, alpha={ours.alpha:g} on {', '.join(t for t in ours.targets if t in 'qkv')}: PEFT puts "
                f"LoRA on the whole fused c_attn, so those {n} slices become one adapter of rank {n} x {ours.r} with "
                f"zero rows where LoRA is off, and lora_alpha keeps the scale {ours.scaling:g}: the same model)"
            )
        return (
            f"{args.out}: PEFT adapter, r={config['r']}, lora_alpha={config['lora_alpha']}, "
            f"use_rslora={config['use_rslora']}, target_modules={config['target_modules']}{why}"
        )
    if args.direction == "export":
        from lora_nlg.weights.merged import export_merged

        export_merged(args.ckpt, args.out, args.pretrained)
        return f"{args.out}: GPT-2 with LoRA merged (config.json, model.safetensors)"
    if args.format == "peft":
        from lora_nlg.weights.peft import import_peft

        cfg = import_peft(args.adapter_dir, args.out, args.model_card, args.pretrained)
    else:
        from lora_nlg.weights.upstream import import_upstream

        cfg = import_upstream(
            args.upstream_ckpt,
            args.out,
            args.lora_dim,
            args.lora_alpha,
            args.model_card,
            args.lora_scaling_rule,
            args.lora_dropout,
        )
    return (
        f"{args.out}: r={cfg.r}, alpha={cfg.alpha:g}, {cfg.scaling_rule} (scaling {cfg.scaling:g}), "
        f"targets={list(cfg.targets)}"
    )


def main(argv=None) -> int:
    return run_program("lora_export.py", _main, argv, code=1)


def _main(argv) -> int:
    print(run(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
