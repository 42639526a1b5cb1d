"""The `inspect_image` tool: ask a multimodal chat model a question about an image."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.content import create_image_block, create_text_block
from langchain_core.tools import ToolException
from pydantic import BaseModel, Field, model_validator

from langgraph_taskcraft.loaders import LoadError, LoadSettings, load_document
from langgraph_taskcraft.records import ImageData
from langgraph_taskcraft.tools.base import AgentTool

INSPECT_INSTRUCTIONS = (
    "You look at an image and answer a question about it. Answer from what the image shows, "
    "briefly and precisely (quote numbers, labels and text exactly). If the image does not "
    "show the answer, say so."
)


class InspectImageInput(BaseModel):
    """Arguments of the `inspect_image` tool."""

    source: str = Field(description="The image to look at: a file path or a URL.")
    question: str = Field(
        description="What to find out, e.g. 'What value is written on the tallest bar?' or "
        "'What text is shown in the top left?'."
    )


class InspectImageTool(AgentTool):
    """Loads and downscales an image (loaders) and asks a multimodal model about it.

    The model is given directly (`model`) or built on first use (`model_factory`), so a tool
    list can be assembled before any client exists. The image travels as a LangChain standard
    base64 image content block, which every multimodal integration translates.
    """

    name: str = "inspect_image"
    description: str = (
        "Look at an image (file path or URL) and answer a question about what it shows: "
        "chart values, labels, text in the image, objects. Ask one specific question per call."
    )
    args_schema: type[BaseModel] = InspectImageInput

    model: BaseChatModel | None = Field(default=None, description="A multimodal chat model.")
    model_factory: Callable[[], BaseChatModel] | None = Field(
        default=None, description="Builds the model on first use (when `model` is not given)."
    )
    load_settings: LoadSettings = Field(
        default_factory=LoadSettings, description="Image size limits and download limits."
    )
    instructions: str = INSPECT_INSTRUCTIONS

    @model_validator(mode="after")
    def _needs_a_model(self) -> InspectImageTool:
        if self.model is None and self.model_factory is None:
            raise ValueError("InspectImageTool needs `model` or `model_factory`")
        return self

    def chat_model(self) -> BaseChatModel:
        """The model to ask (built by `model_factory` on first use)."""
        if self.model is None:
            assert self.model_factory is not None
            self.model = self.model_factory()
        return self.model

    def load_image(self, source: str) -> ImageData:
        """The downscaled image at a path or URL; ToolException when it is not a readable image."""
        source = source.strip()
        try:
            record = load_document(source, self.load_settings)
        except LoadError as exc:
            raise ToolException(f"Could not load the image {source}: {exc.detail}") from exc
        except Exception as exc:  # noqa: BLE001 - whatever failed, the agent gets a message
            raise ToolException(
                f"Could not load the image {source}: {type(exc).__name__}: {exc}"
            ) from exc
        if not record.images:
            raise ToolException(f"{source} is not an image (it is a {record.kind} document).")
        return record.images[0]

    def messages(self, image: ImageData, question: str) -> list[BaseMessage]:
        """The prompt: instructions, then the question and the image as content blocks."""
        return [
            SystemMessage(self.instructions),
            HumanMessage(
                content_blocks=[
                    create_text_block(question),
                    create_image_block(base64=image.base64, mime_type=image.mime_type),
                ]
            ),
        ]

    def _run(self, source: str, question: str, **_: Any) -> str:
        """Ask the model synchronously."""
        image = self.load_image(source)
        try:
            reply = self.chat_model().invoke(self.messages(image, question))
        except Exception as exc:  # noqa: BLE001 - e.g. a model that does not accept images
            raise ToolException(f"The image model failed: {type(exc).__name__}: {exc}") from exc
        return reply.text.strip() or "(the image model gave no answer)"

    async def _arun(self, source: str, question: str, **_: Any) -> str:
        """Ask the model asynchronously (loading runs in a worker thread)."""
        image = await asyncio.to_thread(self.load_image, source)
        model = await asyncio.to_thread(self.chat_model)
        try:
            reply = await model.ainvoke(self.messages(image, question))
        except Exception as exc:  # noqa: BLE001 - e.g. a model that does not accept images
            raise ToolException(f"The image model failed: {type(exc).__name__}: {exc}") from exc
        return reply.text.strip() or "(the image model gave no answer)"
