"""reasonjax: JAX-native training of language models that reason and improve themselves."""

import pathlib

import setuptools

setuptools.setup(
    name="reasonjax",
    version="0.1.0",
    description="JAX-native training of language models to reason and to improve themselves.",
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["reasonjax", "reasonjax.*", "configs"]),
    package_data={"reasonjax.data": ["tokenizer_models/*.model"]},
    install_requires=[
        # jax 0.11 is what the GPU images ship; keep both working.
        "jax>=0.10.2,<0.13",
        "flax>=0.12.0,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11.0,<0.13",
        "ml-collections>=1.0,<2",
        "absl-py>=2.0,<3",
        "numpy>=1.26,<3",
        "safetensors>=0.4.3,<1",
        "transformers>=5.0,<6",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",  # TensorBoard event files without TensorFlow (metrics.MetricWriter)
        # Data: TFDS builders in array_record format read through grain (no TensorFlow needed).
        "tensorflow-datasets>=4.9.9,<5",
        "importlib_resources>=6",  # TFDS needs it for builders defined in a package
        "grain>=0.2.12,<0.3",
        "array-record>=0.7,<0.9",
        "sentencepiece>=0.2,<0.3",
        # MATH answer equivalence.
        "math-verify[antlr4_13_2]>=0.8,<0.10",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.6,<4",  # the suite runs in 2 worker processes (pytest.ini)
            "scipy>=1.11,<2",  # chi-square quantiles for the sampling tests
            "nbclient>=0.10,<1",  # executes the colabs
            "nbformat>=5.9,<6",
            "ipykernel>=6.29,<8",
            "matplotlib>=3.8,<4",  # the colabs' plots
            # The only torch that installs as a CPU wheel on the CI machines; any other spec pulls CUDA.
            "torch==2.13.0",
            "peft>=0.15,<1",  # LoRA exports are checked by loading them with peft
        ],
        "gpu": ["jax[cuda12]>=0.10.2,<0.13"],
        "tpu": ["jax[tpu]>=0.10.2,<0.13"],
    },
)
