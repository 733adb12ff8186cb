"""Changing what the UNet computes on purpose: edits built on the attention layers' edit hook."""

from .prompt_to_prompt import prompt_to_prompt

__all__ = ["prompt_to_prompt"]
