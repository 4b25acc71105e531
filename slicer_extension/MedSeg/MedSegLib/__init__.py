"""Plain-Python side of the MedSeg Slicer module: no ``slicer``, ``qt``, ``vtk`` or ``ctk`` here.

It runs in Slicer's Python (3.9 in Slicer 5.8, 3.12 from 5.10) and in the project's pytest
suite against a real server.
"""
from .client import (DEFAULT_TIMEOUT_S, INFER_TIMEOUT_S, InferResult, MedSegClient, default_client_id,
                     image_id_for, normalize_server_url)
from .errors import (LabelMappingError, MedSegClientError, ProtocolError, ServerResponseError, ServerTimeoutError,
                     ServerUnreachableError)
from .info import ModelInfo, ServerInfo
from .interactive import INTERACTIVE_MODEL, EditState, GuidedEdit, ras_to_ijk
from .jobs import BackgroundJobs
from .labels import LabelSet, compose_label_array, masks_from_label_array, present_labels
from .multipart import encode_multipart, parse_multipart
from .training import TrainingMonitor, TrainingProgress, fetch_training_state
from .workflow import LabelingSession, SubmitResult, fetch_sample_image, shared_image_path, submit_label

__all__ = [
    "DEFAULT_TIMEOUT_S", "INFER_TIMEOUT_S", "InferResult", "MedSegClient", "default_client_id", "image_id_for",
    "normalize_server_url", "LabelMappingError", "MedSegClientError", "ProtocolError", "ServerResponseError",
    "ServerTimeoutError", "ServerUnreachableError", "ModelInfo", "ServerInfo", "INTERACTIVE_MODEL", "EditState", "GuidedEdit",
    "ras_to_ijk", "BackgroundJobs", "LabelSet",
    "compose_label_array", "masks_from_label_array", "present_labels", "encode_multipart", "parse_multipart",
    "TrainingMonitor", "TrainingProgress", "fetch_training_state", "LabelingSession", "SubmitResult",
    "fetch_sample_image", "shared_image_path", "submit_label",
]
