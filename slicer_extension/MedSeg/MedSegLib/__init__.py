"""Plain-Python side of the MedSeg Slicer module: no ``slicer``, ``qt``, ``vtk`` or ``ctk`` here.

It runs in Slicer's Python (3.9 in Slicer 5.8, 3.12 from 5.10) and in the project's pytest
suite against a real server.
"""
from .client import (DEFAULT_TIMEOUT_S, INFER_TIMEOUT_S, InferResult, MedSegClient, default_client_id,
                     image_id_for, normalize_server_url)
from .errors import (AuthenticationRequiredError, LabelMappingError, MedSegClientError, ProtocolError,
                     RequestCancelledError, ServerResponseError, ServerTimeoutError, ServerUnreachableError)
from .geometry import clamp_ijk, ras_to_ijk, roi_box_ijk, roi_corners_world, roi_is_placed, world_to_ijk_matrix
from .info import ModelInfo, ServerInfo
from .interactive import (INTERACTIVE_MODEL, AnswerTarget, EditState, GuidedEdit, GuidedRequest, answer_region_kji,
                          describe_answer)
from .jobs import BackgroundJobs
from .labels import (LabelSet, check_label_values, check_segment_names, color_table_rows, compose_label_array,
                     masks_from_label_array, number_of_colors, present_labels, segment_ids_by_value)
from .multipart import encode_multipart, multipart_stream, parse_multipart
from .training import TrainingMonitor, TrainingProgress, fetch_training_state
from .workflow import (LabelingSession, SubmitResult, connect, describe_version, fetch_sample_image, shared_image_path,
                       submit_label)

__all__ = [
    "DEFAULT_TIMEOUT_S", "INFER_TIMEOUT_S", "InferResult", "MedSegClient", "default_client_id", "image_id_for",
    "normalize_server_url", "AuthenticationRequiredError", "LabelMappingError", "MedSegClientError", "ProtocolError",
    "RequestCancelledError", "ServerResponseError", "ServerTimeoutError", "ServerUnreachableError",
    "clamp_ijk", "ras_to_ijk", "roi_box_ijk", "roi_corners_world", "roi_is_placed", "world_to_ijk_matrix",
    "ModelInfo", "ServerInfo", "INTERACTIVE_MODEL", "AnswerTarget", "EditState", "GuidedEdit", "GuidedRequest",
    "answer_region_kji", "describe_answer", "BackgroundJobs", "LabelSet",
    "check_label_values", "check_segment_names", "color_table_rows", "compose_label_array", "masks_from_label_array",
    "number_of_colors", "present_labels", "segment_ids_by_value", "encode_multipart", "multipart_stream",
    "parse_multipart", "TrainingMonitor", "TrainingProgress", "fetch_training_state", "LabelingSession",
    "SubmitResult", "connect", "describe_version", "fetch_sample_image", "shared_image_path", "submit_label",
]
