"""The outside client of stp's Hugging Face Llama tests (tests/checkpoint/hf_llama_test.cpp).

  make DIR [--tied] [--shards]   a tiny random LlamaForCausalLM (grouped-query attention: 4 heads,
                                 2 key/value heads; rope_theta 5000; rms_norm_eps 1e-6,
                                 transformers' default) saved with save_pretrained,
                                 every tensor drawn at random (RMSNorm weights too); --tied ties
                                 the head to the embedding; --shards splits it into several files
                                 with model.safetensors.index.json. Also writes DIR/ref.safetensors
                                 as hf_gpt2.py does (tokens, targets, logits, loss).
  eval DIR TOKENS OUT            loads DIR with LlamaForCausalLM.from_pretrained and writes OUT like
                                 ref.safetensors for the tokens and targets in TOKENS.
Nothing is downloaded: the model is built from a config.
"""
import torch
import transformers

from hf_gpt2 import main, save_random

VOCAB, POSITIONS, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 61, 32, 32, 48, 4, 4, 2


def make(out, flags):
    tied = "--tied" in flags
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
                                   rms_norm_eps=1e-6, rope_theta=5000.0, tie_word_embeddings=tied,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(20240602 + tied)
    model = transformers.LlamaForCausalLM(cfg)
    save_random(model, out, flags, lambda name: name.endswith("norm.weight"), VOCAB, 11)


if __name__ == "__main__":
    main(transformers.LlamaForCausalLM, make,
         "usage: hf_llama.py make DIR [--tied] [--shards] | eval DIR TOKENS OUT")
