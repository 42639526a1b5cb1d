"""Images: checked, downscaled and re-encoded for multimodal models (Pillow)."""

from __future__ import annotations

import base64
import io
from typing import Any

from langgraph_taskcraft.loaders.base import DEFAULT_SETTINGS, LoadError, LoadSettings, build_record
from langgraph_taskcraft.records import DocumentRecord, ImageData

# Photographs stay JPEG (much smaller); everything else (diagrams, screenshots, transparency)
# becomes PNG, which keeps thin lines and text sharp.
_PHOTO_FORMATS = {"JPEG", "MPO", "WEBP"}
_JPEG_QUALITY = 85


def _open(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data))


def encode_image(
    data: bytes, settings: LoadSettings = DEFAULT_SETTINGS, *, caption: str = ""
) -> tuple[ImageData, bytes, tuple[int, int]]:
    """Check, downscale and re-encode an image.

    Returns the ImageData (base64 PNG or JPEG, longer side <= `settings.image_max_side`), the
    encoded bytes and the original (width, height). Raises `LoadError("image_too_large")` for
    images declaring more than `settings.image_max_pixels` pixels (decompression bombs; refused
    from the header, before decoding) and `LoadError("image_unreadable")` for anything Pillow
    cannot identify, verify or decode.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise LoadError("image_unreadable", "the image file is empty (0 bytes)")
    try:
        # Our limit is checked per call from the header; Pillow's global MAX_IMAGE_PIXELS is
        # left alone (changing it from worker threads would leak into every other caller).
        image = _open(data)
        original_size = image.size
        image_format = image.format or ""
        width, height = original_size
        if width * height > settings.image_max_pixels:
            raise LoadError(
                "image_too_large",
                f"the image declares {width}x{height} pixels, more than the limit of "
                f"{settings.image_max_pixels:,} (a decompression bomb?)",
            )
        if width <= 0 or height <= 0:
            raise LoadError("image_unreadable", f"the image has no pixels ({width}x{height})")
        image.verify()  # structural check (chunk CRCs); the object is unusable afterwards
        image = _open(data)
        image.load()
    except LoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise LoadError("image_too_large", f"the image is too large to decode ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise LoadError("image_unreadable", "not an image Pillow can identify") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow signals truncated or corrupt data with these (verify raises SyntaxError).
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise LoadError(
            "image_unreadable", f"the image is corrupt or truncated ({detail})"
        ) from exc

    image = ImageOps.exif_transpose(image) or image  # honour camera orientation
    image.thumbnail((settings.image_max_side, settings.image_max_side), Image.Resampling.LANCZOS)
    has_alpha = image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info
    if has_alpha:
        image = image.convert("RGBA")
        alpha_low, _ = image.getchannel("A").getextrema()
        if alpha_low == 255:  # an alpha channel that hides nothing only costs bytes
            image, has_alpha = image.convert("RGB"), False
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode not in {"RGB", "L"}:
        image = image.convert("RGB")

    buffer = io.BytesIO()
    if image_format in _PHOTO_FORMATS and not has_alpha:
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY, optimize=True)
        mime_type = "image/jpeg"
    else:
        image.save(buffer, format="PNG", optimize=False)
        mime_type = "image/png"
    encoded = buffer.getvalue()
    image_data = ImageData(
        mime_type=mime_type,
        base64=base64.b64encode(encoded).decode("ascii"),
        width=image.width,
        height=image.height,
        caption=caption,
    )
    return image_data, encoded, original_size


def image_document(
    data: bytes,
    *,
    source: str,
    settings: LoadSettings,
    name: str,
    identifier: str,
) -> DocumentRecord:
    """Record for an image: one downscaled ImageData and a one-line placeholder text."""
    image_data, encoded, (width, height) = encode_image(data, settings)
    return build_record(
        source=source,
        kind="image",
        identifier=identifier,
        text=f"Image: {name}, {width}x{height}",
        settings=settings,
        images=[(image_data, encoded)],
        metadata={
            "identifier_source": "file_name",
            "width": width,
            "height": height,
            "encoded_width": image_data.width,
            "encoded_height": image_data.height,
        },
    )
