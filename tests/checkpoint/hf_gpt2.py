"""The outside client of stp's Hugging Face import/export tests (tests/checkpoint/hf_test.cpp).

  make DIR [--shards]   a tiny random GPT2LMHeadModel saved with save_pretrained (every tensor
                        drawn at random: LayerNorm weights and biases too); --shards splits it
                        into several files with model.safetensors.index.json. Also writes
                        DIR/ref.safetensors: tokens, targets (B, T) int64, the model's logits
                        (B, T, V) float32 and loss () (mean cross-entropy of logits vs targets).
  eval DIR TOKENS OUT   loads DIR with from_pretrained and writes OUT like ref.safetensors for
                        the tokens and targets in TOKENS (a safetensors file).
Nothing is downloaded: the model is built from a config. hf_llama.py reuses save_random and
main for LlamaForCausalLM.
"""
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

VOCAB, POSITIONS, EMBD, LAYERS, HEADS = 67, 24, 32, 4, 4
BATCH, SEQ = 3, 20


def evaluate(model, tokens, targets):
    model.eval()
    with torch.no_grad():
        logits = model(tokens).logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    return {"tokens": tokens, "targets": targets, "logits": logits.contiguous(), "loss": loss}


def save_random(model, out, flags, is_norm_weight, vocab, data_seed):
    """Every parameter drawn at random (norm weights around 1), saved with save_pretrained
    (in 20 KB shards with --shards), and ref.safetensors for random tokens below `vocab`."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1 if is_norm_weight(name) else 0) + 0.2 * torch.randn_like(p))
    model.save_pretrained(out, **({"max_shard_size": "20KB"} if "--shards" in flags else {}))
    g = torch.Generator().manual_seed(data_seed)
    tokens = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    targets = torch.randint(0, vocab, (BATCH, SEQ), generator=g)
    save_file(evaluate(model, tokens, targets), out + "/ref.safetensors")


def make(out, flags):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=EMBD,
                                  n_layer=LAYERS, n_head=HEADS, bos_token_id=None,
                                  eos_token_id=None)
    torch.manual_seed(20240601)
    model = transformers.GPT2LMHeadModel(cfg)
    norms = ("ln_1.weight", "ln_2.weight", "transformer.ln_f.weight")
    save_random(model, out, flags, lambda name: name.endswith(norms), VOCAB, 7)


def main(model_class, make, usage):
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "eval":
        model = model_class.from_pretrained(sys.argv[2])
        t = load_file(sys.argv[3])
        save_file(evaluate(model, t["tokens"], t["targets"]), sys.argv[4])
    else:
        sys.exit(usage)


if __name__ == "__main__":
    main(transformers.GPT2LMHeadModel, make,
         "usage: hf_gpt2.py make DIR [--shards] | eval DIR TOKENS OUT")
