"""Pydantic models of workflow spec v1. FIRST DRAFT: to be completed (YAML lines, placeholders)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dagwire.errors import WorkflowValidationError


class RetryPolicy(BaseModel):
    """How often and how patiently a task is retried."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_attempts: int = Field(default=1, ge=1)
    initial_backoff: float = Field(default=0.2, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    max_backoff: float = Field(default=10.0, ge=0)


class TaskSpec(BaseModel):
    """One task of a workflow spec."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    agent: str = Field(min_length=1)
    params: Any = None
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: float | None = Field(default=None, gt=0)


class WorkflowSpec(BaseModel):
    """A whole workflow spec (v1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1)
    vars: dict[str, Any] = Field(default_factory=dict)
    max_parallel: int = Field(default=8, ge=1)
    fail_fast: bool = False
    tasks: tuple[TaskSpec, ...] = Field(min_length=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowSpec:
        try:
            return cls.model_validate(data)
        except Exception as exc:
            raise WorkflowValidationError(str(exc)) from None

    @classmethod
    def from_yaml(cls, text: str) -> WorkflowSpec:
        from ruamel.yaml import YAML

        return cls.from_dict(YAML(typ="safe").load(text))

    @classmethod
    def from_json(cls, text: str) -> WorkflowSpec:
        return cls.from_dict(json.loads(text))

    def resolve(self, user_vars: dict[str, str] | None = None) -> WorkflowSpec:
        return self
