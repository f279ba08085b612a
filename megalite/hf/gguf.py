"""megalite checkpoint (or HF folder) -> one GGUF file that llama.cpp runs, written with the ``gguf``
package (llama.cpp's own writer).

The model goes out as llama.cpp's ``llama`` architecture: our tensors take the Hugging Face Llama
names (megalite/hf/layout.py) and from there llama.cpp's (gguf's own name table); q and k rows
are permuted from the rotate-half RoPE layout we share with HF to the interleaved pairs
llama.cpp's llama rope rotates (what llama.cpp's convert_hf_to_gguf.py does for LlamaModel).
RoPE scaling: linear as metadata, llama3 as the ``rope_freqs`` tensor; yarn, dynamic and longrope
are refused (longrope: llama.cpp's llama architecture has no short / long factor tensors, and
where llama.cpp has them, Phi-3, it picks the set by its context size, not by each sequence's
length as transformers does). The tokenizer goes along (megalite/hf/gguf_vocab.py); 2-D weights are stored as f16,
q8_0 or q4_0 (rows whose length is not a multiple of the 32-value block stay f16), norms f32.
"""

import math
import os
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from megalite.config import Config, ModelConfig
from megalite.data.tokenizer import HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer, build_tokenizer
from megalite.errors import MegaliteError
from megalite.hf.config import hf_config
from megalite.hf.convert import is_hf_folder, read_hf
from megalite.hf.gguf_vocab import gguf_vocab
from megalite.hf.layout import to_hf
from megalite.posttrain.lora_io import full_model_state
from megalite.utils.atomic import publish, remove_quietly, temp_name, writing
from megalite.utils.progress import Progress

GGUF_TYPES = ("f16", "q8_0", "q4_0")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MegaliteError("--to-gguf needs the gguf package: pip install 'megalite[gguf]'") from None
    return gguf


def export_gguf(load: str, out_path: str, gguf_type: str = "f16", chat_template: Optional[str] = None,
                space_prefix: bool = True) -> Dict:
    """Write ``out_path``; returns what the tokenizer export had to say (``notes``). ``space_prefix``:
    see megalite/hf/gguf_vocab.py."""
    gguf = _gguf()
    if gguf_type not in GGUF_TYPES:
        raise MegaliteError(f"--gguf-type {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}")
    if os.path.isdir(out_path):
        raise MegaliteError(f"--save {out_path} is a folder; give the .gguf file to write")
    state, cfg, tokenizer, template = _read(load)
    _check_llama(cfg, state, load)
    if tokenizer is None:
        raise MegaliteError(f"{load}: no tokenizer recorded; a GGUF file carries its tokenizer")
    vocab = gguf_vocab(tokenizer, cfg.padded_vocab_size, space_prefix)
    tmp = temp_name(out_path)
    try:
        with writing(out_path, tmp):
            w = gguf.GGUFWriter(tmp, "llama")
            _write_metadata(w, gguf, cfg, gguf_type, os.path.basename(os.path.normpath(load)))
            vocab.write(w)
            if chat_template or template:
                w.add_chat_template(chat_template or template)
            progress = Progress("gguf")
            for name, t in llama_cpp_tensors(state, cfg, gguf):
                data, qtype = _encode(t, gguf_type, gguf)
                w.add_tensor(name, data, raw_dtype=qtype)
                progress.update(data.nbytes, tensors=1)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            progress.close()
            publish(tmp, out_path)
    except BaseException:
        remove_quietly(tmp)
        raise
    return {"notes": vocab.notes}


def _read(load: str) -> Tuple[Dict[str, torch.Tensor], ModelConfig, Optional[Tokenizer], Optional[str]]:
    """(weights, model settings, tokenizer, chat template) of a checkpoint or a HF folder."""
    if is_hf_folder(load):
        state, cfg = read_hf(load)
        if not os.path.isfile(os.path.join(load, "tokenizer.json")):
            return state, cfg, None, None
        tok = HuggingFaceTokenizer(load)
        spm_file = os.path.join(load, "tokenizer.model")  # a Llama-style folder's sentencepiece model:
        if os.path.isfile(spm_file):  # its vocabulary, when it holds every token of tokenizer.json
            spm = SentencePieceTokenizer(spm_file)
            if spm.vocab_size == tok.vocab_size:
                return state, cfg, spm, tok.chat_template
        return state, cfg, tok, tok.chat_template
    state, args = full_model_state(load)
    run = Config.from_dict(args)
    d = run.data
    tok = build_tokenizer(d.tokenizer_type, d.tokenizer_model, d.vocab_file, d.merge_file) if d.tokenizer_type else None
    return state, run.model, tok, run.chat.chat_template or (tok.chat_template if tok else None)


def _check_llama(cfg: ModelConfig, state, load: str) -> None:
    kind = hf_config(cfg, "float16")["model_type"]  # refuses what has no HF equivalent at all
    if kind != "llama":
        raise MegaliteError(f"{load}: GGUF export writes llama.cpp's llama architecture (RMSNorm, RoPE, SwiGLU, "
                            f"no biases, no sliding window); this model is a {kind}")
    if "score.weight" in state:
        raise MegaliteError(f"{load}: a reward model (score head) has no GGUF export")
    if cfg.use_rope_scaling and cfg.rope_type not in ("linear", "llama3"):
        raise MegaliteError(f"{load}: --rope-type {cfg.rope_type} is not exported to GGUF (linear and llama3 are)")


def _write_metadata(w, gguf, cfg: ModelConfig, gguf_type: str, name: str) -> None:
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.ffn_hidden_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_query_groups)
    w.add_key_length(cfg.kv_channels)
    w.add_value_length(cfg.kv_channels)
    w.add_rope_dimension_count(cfg.kv_channels)
    w.add_rope_freq_base(float(cfg.rotary_base))
    w.add_layer_norm_rms_eps(cfg.norm_epsilon)
    w.add_vocab_size(cfg.padded_vocab_size)
    if cfg.use_rope_scaling and cfg.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling_factor)
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type])


def rope_pairs(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from rotate-half order (x_i pairs x_{i+d/2}) to interleaved pairs (x_2i, x_2i+1)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def llama_cpp_tensors(state, cfg: ModelConfig, gguf) -> Iterator[Tuple[str, torch.Tensor]]:
    """(llama.cpp name, tensor) for our state dict: through the HF Llama names to gguf's."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_layers)
    for hf_name, t in to_hf(state, cfg):
        if hf_name.endswith("q_proj.weight"):
            t = rope_pairs(t, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            t = rope_pairs(t, cfg.num_query_groups)
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise MegaliteError(f"no llama.cpp name for {hf_name}")
        yield name, t
    if cfg.use_rope_scaling and cfg.rope_type == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(cfg)


def llama3_rope_factors(cfg: ModelConfig) -> torch.Tensor:
    """What llama.cpp divides each RoPE frequency by under Llama 3's scaling: 1 for short
    wavelengths, the factor for long ones, a smooth blend between."""
    d = cfg.kv_channels
    freqs = 1.0 / (cfg.rotary_base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    old = cfg.original_max_position_embeddings
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / cfg.high_freq_factor:
            out.append(1.0)
        elif wavelen > old / cfg.low_freq_factor:
            out.append(cfg.rope_scaling_factor)
        else:
            smooth = (old / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
            out.append(1 / ((1 - smooth) / cfg.rope_scaling_factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def _encode(t: torch.Tensor, gguf_type: str, gguf):
    """(numpy data, gguf type): 1-D tensors f32, matrices f16 or quantized in 32-value blocks."""
    a = t.detach().to(torch.float32).numpy()
    if a.ndim == 1:
        return a, gguf.GGMLQuantizationType.F32
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(gguf_type)
    if qtype is None or a.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return a.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(a, qtype), qtype
