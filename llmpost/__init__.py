"""llmpost: LLM post-training and unlearning methods as Hugging Face TRL trainers."""

__version__ = "0.1.0"
