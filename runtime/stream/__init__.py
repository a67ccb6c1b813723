"""The camera loop: sources (URIs), threaded capture, outputs with overlay, the one-frame step and the loop."""

from edgepure.runtime.stream.capture import Capture, CaptureStats
from edgepure.runtime.stream.loop import Runner, run_stream
from edgepure.runtime.stream.outputs import open_output
from edgepure.runtime.stream.sources import BadFrameError, Frame, Source, SourceError, open_source

__all__ = ["BadFrameError", "Capture", "CaptureStats", "Frame", "Runner", "Source", "SourceError", "open_output",
           "open_source", "run_stream"]
