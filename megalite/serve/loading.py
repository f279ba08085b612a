"""What tools/serve.py serves: a megalite checkpoint, or a Hugging Face folder imported once the
way every tool imports one (megalite.hf.source), optionally with a peft LoRA adapter on
top, with the tokenizer and chat template it was trained with; in one process, or split over
the tensor-parallel ranks of torchrun (megalite.serve.tp)."""

import os
from typing import Optional

import torch

from megalite.data.chat import chat_template_for, turn_end_strings
from megalite.errors import MegaliteError
from megalite.eval.loading import checkpoint_tokenizer, default_device, load_model
from megalite.model.decoding import new_cache
from megalite.model.kv_cache import SlotKVCache
from megalite.posttrain.lora import add_adapters
from megalite.posttrain.lora_io import read_adapter_config, read_peft_adapter
from megalite.serve.app import Served
from megalite.serve.engine import Engine
from megalite.serve.tp import Leader, control_group, follow


def load_served(load: str, adapter: Optional[str] = None, max_batch_size: int = 8, max_model_len: Optional[int] = None,
                max_queue: int = 64, name: Optional[str] = None, chat_template: Optional[str] = None,
                device: Optional[torch.device] = None, tensor_parallel: int = 1,
                max_prefill_tokens: int = 512) -> Optional[Served]:
    """The model behind ``load`` with a started Engine (stop it with ``served.engine.stop()``).
    With ``tensor_parallel`` N > 1 (under torchrun, N ranks) rank 0 gets that, split over the
    ranks; the others run the steps rank 0 sends and return None once it stops."""
    name = name or os.path.basename(os.path.normpath(adapter or load))
    if tensor_parallel > 1 and adapter:
        raise MegaliteError("--load-adapter with --tensor-model-parallel-size > 1: merge the adapter first "
                            "(tools/convert_checkpoint.py --to-hf) and serve that folder")
    model, cfg = load_model(load, device, tensor_parallel=tensor_parallel) if tensor_parallel > 1 else load_model(load)
    if adapter:
        for key, value in read_adapter_config(adapter).items():
            setattr(cfg.lora, key, value)
        add_adapters(model, cfg)
        read_peft_adapter(adapter, model)
    if tensor_parallel == 1:  # under torchrun each rank's model is on its own device already
        model = model.to(device or default_device() or torch.device("cpu"))
    model.eval()
    tok = checkpoint_tokenizer(cfg)
    positions = cfg.model.max_position_embeddings
    if max_model_len is None:
        max_model_len = positions
    elif max_model_len > positions and cfg.model.position_embedding_type == "learned_absolute":
        raise MegaliteError(f"--max-model-len {max_model_len} exceeds the model's {positions} learned positions")
    if max_batch_size < 1 or max_model_len < 2:
        raise MegaliteError("--max-batch-size must be at least 1 and --max-model-len at least 2")
    try:
        template, why_not = chat_template_for(chat_template, cfg.chat.chat_template, tok), ""
    except MegaliteError as e:
        if chat_template:
            raise
        template, why_not = None, str(e)
    followers = None
    if tensor_parallel > 1:
        group = control_group()
        if torch.distributed.get_rank() != 0:
            device = next(model.parameters()).device
            follow(model, new_cache(model, max_batch_size, max_model_len, device, kind=SlotKVCache), group)
            return None
        followers = Leader(group)
    engine = Engine(model, tok.decode, max_batch_size, max_model_len, max_queue, tok.vocab_size, max_prefill_tokens,
                    followers).start()
    return Served(engine, tok, name, max_model_len, template, why_not, tuple(turn_end_strings(template or "")))
