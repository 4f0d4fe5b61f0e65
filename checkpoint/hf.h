// Hugging Face model folders in and out: a folder `transformers` writes with save_pretrained
// (config.json, and model.safetensors or shards listed in model.safetensors.index.json) read
// into stp's parameters by name, and stp parameters written back as such a folder.
//
// Note [HF tensor maps]
// A model family is a table of HfTensorMap rows, one per stp parameter: the HF tensor it comes
// from, the HF shape expected, and how the HF layout maps onto stp's (out, in) layout
// (HfLayout). Import reads each row through a zero-copy view of the memory-mapped file, so a
// rank that slices its TP shard out of the view touches only the pages of that slice; export
// applies the inverse of the same row. GPT-2 (GPT2LMHeadModel) is the table gpt2_tensor_map,
// Llama (LlamaForCausalLM) llama_tensor_map; each family has a config reader and an HfImport
// factory. A stacked row (HfLayout::kStack: Llama's k_proj/v_proj -> attn.kv.w, gate_proj/
// up_proj -> mlp.gate_up.w) reads two HF tensors; shard() narrows each before stacking, so a
// rank copies only its slice.
//
// Llama's rotary embedding: transformers' LlamaForCausalLM rotates the two halves of each head
// (rotate_half), as stp's ops::rotary_apply does, so q_proj/k_proj rows map onto stp's rows
// unpermuted (Note [Llama parameter layout]); a checkpoint converted from Meta's interleaved
// layout has already been permuted by transformers' converter.
//
// Every mismatch is one line naming the file, the tensor or config field, the expected and the
// found value (std::invalid_argument).
//
// Thread-safety: an HfImport is immutable after construction; any thread may read views.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "models/gpt_config.h"
#include "models/llama_config.h"

namespace stp::data {
class MappedFile;
}

namespace stp::checkpoint {

// How an HF tensor is laid out relative to stp's full tensor.
enum class HfLayout {
  kSame,       // identical
  kConv1D,     // GPT-2's Conv1D stores (in, out); stp stores (out, in): a transpose
  kConv1DQkv,  // c_attn.weight (C, 3C), columns [q | k | v] -> stp's qkv.w (3, C, C)
  kQkvBias,    // c_attn.bias (3C) -> stp's qkv.b (3, C)
  kFirstRows,  // wpe (n_positions, C) -> stp's (seq_len, C): the first seq_len rows
  kStack,      // two HF tensors `hf`, `hf2` of hf_shape -> stp's (2, ...) = stack([hf, hf2])
};

struct HfTensorMap {
  std::string stp;                      // stp parameter name ("layers.3.attn.qkv.w")
  std::string hf;                       // HF tensor name ("transformer.h.3.attn.c_attn.weight")
  HfLayout layout = HfLayout::kSame;    //
  std::vector<std::int64_t> hf_shape;   // expected in the HF file
  std::vector<std::int64_t> stp_shape;  // stp's full shape
  std::string tied_to =
      "";                // HF tensor read when `hf` is absent (a tied lm_head: wte); "" required
  std::string hf2 = "";  // kStack: the second HF tensor (v_proj, up_proj)
};

// stp's full tensor from the HF tensor (a view when the layout allows; no copy). kStack rows
// take their two tensors in HfImport::full.
at::Tensor hf_to_stp(const at::Tensor& hf, const HfTensorMap& row);
// The HF tensor from stp's full tensor, contiguous; for kStack, `part` 0 (hf) or 1 (hf2).
at::Tensor stp_to_hf(const at::Tensor& full, const HfTensorMap& row, int part = 0);

// The architecture a Hugging Face folder's config.json names: architectures[0], else its
// model_type ("GPT2LMHeadModel", "LlamaForCausalLM", "llama"). Throws for an unreadable file.
std::string read_hf_architecture(const std::string& dir);

// GPT-2 <-> stp's GPT (Note [GPT parameter layout]). Reads `dir`/config.json and checks that it
// describes a GPT2LMHeadModel stp's GPT computes exactly: gelu_new (tanh) activation, scaled
// attention not scaled by layer index, no cross-attention. Returns its shape as a GptConfig:
// vocab_size, n_positions (as seq_len), n_embd, n_head, n_layer, n_inner (0 when null),
// layer_norm_epsilon. Dropout probabilities are ignored (stp has no dropout).
models::GptConfig read_gpt2_config(const std::string& dir);
// The rows for `cfg` (its seq_len rows of wpe out of `n_positions`), HF names with `prefix`
// ("transformer." as GPT2LMHeadModel saves them, "" in the original OpenAI files).
std::vector<HfTensorMap> gpt2_tensor_map(const models::GptConfig& cfg, std::int64_t n_positions,
                                         const std::string& prefix = "transformer.");

// LlamaForCausalLM <-> stp's Llama (Note [Llama parameter layout]). Reads `dir`/config.json and
// checks that it describes a model stp's Llama computes exactly: hidden_act silu, no attention
// or MLP biases, head_dim = hidden_size / num_attention_heads, plain rotary embeddings (no
// rope_scaling; rope_parameters.rope_type "default"), rms_norm_eps in (0, kMaxRmsEps]. Returns
// its shape: vocab_size, max_position_embeddings (as seq_len), hidden_size, num_attention_heads,
// num_key_value_heads (as n_kv_heads; default num_attention_heads), num_hidden_layers,
// intermediate_size (as ffn_hidden), rope_theta (rope_parameters.rope_theta or the older
// top-level rope_theta; default 10000), rms_norm_eps (as rms_eps; default 1e-6, transformers'),
// tie_word_embeddings (default false).
models::LlamaConfig read_llama_config(const std::string& dir);
// The rows for `cfg`: model.embed_tokens, model.layers.l.{input_layernorm, self_attn.q/k/v/o_proj,
// post_attention_layernorm, mlp.gate/up/down_proj}, model.norm, and lm_head unless
// cfg.tie_embeddings (an untied stp head reads embed_tokens when the file ties it).
std::vector<HfTensorMap> llama_tensor_map(const models::LlamaConfig& cfg);

// An HF folder opened and matched against a tensor map.
class HfImport {
 public:
  // GPT2LMHeadModel in `dir` for stp's GPT of shape `cfg`: config.json must give cfg's vocab,
  // d_model, n_heads, n_layers, hidden and ln_eps, and n_positions >= cfg.seq_len; every
  // tensor must be there with its shape and no other tensor may be (GPT-2's causal-mask
  // buffers attn.bias / attn.masked_bias are skipped).
  static HfImport gpt2(const std::string& dir, const models::GptConfig& cfg);
  // LlamaForCausalLM in `dir` for stp's Llama of shape `cfg`: config.json must give cfg's
  // vocab, d_model, n_heads, kv_heads(), n_layers, hidden(), rope_theta and rms_eps, and
  // max_position_embeddings >= cfg.seq_len. A tied file loads into an untied cfg (the head
  // starts as a copy of the embedding); an untied file does not load into a tied cfg.
  static HfImport llama(const std::string& dir, const models::LlamaConfig& cfg);

  // stp's full tensor `stp_name`, a read-only view of the mapped file (no copy; writing
  // through it faults). Throws std::invalid_argument for a name the map lacks.
  at::Tensor full(const std::string& stp_name) const;
  // The TP rank's slice of full() along shard_dim (-1: all of it), still a view (a kStack row:
  // a copy of the slice only).
  at::Tensor shard(const std::string& stp_name, int shard_dim, int tp_rank, int tp_size) const;

  const std::string& dir() const { return dir_; }
  const std::string& architecture() const { return architecture_; }
  std::size_t size() const { return rows_.size(); }  // stp tensors mapped

 private:
  struct Stored {  // one HF tensor: where its bytes are
    int file = 0;
    SafetensorsEntry entry;
    std::uint64_t data_start = 0;
  };
  // Maps the safetensors files of `dir`, reads their headers.
  HfImport(const std::string& dir, const std::string& architecture);
  at::Tensor stored(const std::string& hf_name) const;
  const HfTensorMap& row(const std::string& stp_name) const;
  void match(const std::vector<HfTensorMap>& rows, const std::vector<std::string>& skippable);

  std::string dir_;
  std::string architecture_;
  std::vector<std::string> file_names_;
  std::vector<std::shared_ptr<const data::MappedFile>> files_;
  std::map<std::string, Stored> stored_;     // HF name -> bytes
  std::map<std::string, HfTensorMap> rows_;  // stp name -> row
};

// Writes `out` (created if missing) as a GPT2LMHeadModel folder: config.json and
// model.safetensors, tensors in the dtype of `full`. `full` holds every parameter of
// gpt_param_specs(cfg) as full (unsharded) CPU tensors. The head is tied
// (tie_word_embeddings) when lm_head.w equals wte exactly, else written as lm_head.weight.
// n_positions is cfg.seq_len. Returns the number of tensors written.
std::int64_t write_gpt2_folder(const std::string& out, const models::GptConfig& cfg,
                               const TensorMap& full);

// Writes `out` as a LlamaForCausalLM folder (config.json with rope_parameters and the older
// rope_theta, model.safetensors), tensors in the dtype of `full`, which holds every parameter of
// llama_param_specs(cfg) as full CPU tensors. Tied (tie_word_embeddings) when cfg ties the
// embeddings or lm_head.w equals wte exactly. max_position_embeddings is cfg.seq_len.
std::int64_t write_llama_folder(const std::string& out, const models::LlamaConfig& cfg,
                                const TensorMap& full);

struct HfExportResult {
  std::string architecture;  // "GPT2LMHeadModel" or "LlamaForCausalLM"
  std::int64_t tensors = 0;  // written
  std::int64_t ranks_read = 0;
};
// An stp checkpoint folder (DIR/step_N, any tp x pp x dp layout, model.arch gpt or llama) as
// an HF folder at `out`: every parameter's TP shards (from the DP-rank-0 replica, each shard's
// checksum verified) concatenated along its shard dimension (replicated ones from TP rank 0),
// then write_gpt2_folder or write_llama_folder.
HfExportResult export_checkpoint_to_hf(const std::string& checkpoint, const std::string& out);

}  // namespace stp::checkpoint
