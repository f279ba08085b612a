"""Greedy continuation with plain transformers from an exported folder (no megalite code).

    python examples/hf_generate.py .demo/hf_model "To be, or not to be"
"""

import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

folder, prompts = sys.argv[1], sys.argv[2:] or ["To be, or not to be"]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
for prompt in prompts:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(f"--- {prompt!r} (transformers) ->")
    print(tokenizer.decode(out[0], skip_special_tokens=True))
