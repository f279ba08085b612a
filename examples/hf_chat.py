"""Answer questions with plain transformers from an exported chat model (no megalite code): the
prompt is rendered by the tokenizer's chat template, the one fine-tuning used.

    python examples/hf_chat.py .demo/sft_hf "Explain The \"for\" statement."
"""

import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

folder, questions = sys.argv[1], sys.argv[2:]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
for question in questions:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=60, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(f"--- {question!r} (transformers, chat template) ->")
    print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
