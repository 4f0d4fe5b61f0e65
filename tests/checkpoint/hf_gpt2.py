"""The outside client of stp's Hugging Face import/export tests (tests/checkpoint/hf_test.cpp).

  make DIR [--shards]   a tiny random GPT2LMHeadModel saved with save_pretrained (every tensor
                        drawn at random: LayerNorm weights and biases too); --shards splits it
                        into several files with model.safetensors.index.json. Also writes
                        DIR/ref.safetensors: tokens, targets (B, T) int64, the model's logits
                        (B, T, V) float32 and loss () (mean cross-entropy of logits vs targets).
  eval DIR TOKENS OUT   loads DIR with from_pretrained and writes OUT like ref.safetensors for
                        the tokens and targets in TOKENS (a safetensors file).
Nothing is downloaded: the model is built from a config.
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


def make(out, shards):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=EMBD,
                                  n_layer=LAYERS, n_head=HEADS, bos_token_id=None,
                                  eos_token_id=None)
    torch.manual_seed(20240601)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == \
                    "transformer.ln_f.weight":
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    kwargs = {"max_shard_size": "20KB"} if shards else {}
    model.save_pretrained(out, **kwargs)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    targets = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    save_file(evaluate(model, tokens, targets), out + "/ref.safetensors")


def main():
    if sys.argv[1] == "make":
        make(sys.argv[2], "--shards" in sys.argv[3:])
    elif sys.argv[1] == "eval":
        model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[2])
        t = load_file(sys.argv[3])
        save_file(evaluate(model, t["tokens"], t["targets"]), sys.argv[4])
    else:
        sys.exit("usage: hf_gpt2.py make DIR [--shards] | eval DIR TOKENS OUT")


if __name__ == "__main__":
    main()
