"""claude's own transcript in the ledger: mirror frames recorded during chatledger's turns,
and the transcript file written back from the ledger before a resume (issue 20, items 1-2).

These modules are the pieces; the runner and the session actor call them (see the README's
"Claude Agent SDK session store" section for the hooks). They share the ledger sessions and
events of `chatledger.sdk_store`, so an SDK user and chatledger read the same transcripts.
"""

from .mirror import (
    MirrorFrame,
    key_for_transcript_file,
    mirror_frame,
    project_key_for_directory,
    projects_dir,
    transcript_file,
)
from .recorder import RecorderReport, TranscriptRecorder
from .restore import Restored, restore_transcript

__all__ = [
    "MirrorFrame",
    "RecorderReport",
    "Restored",
    "TranscriptRecorder",
    "key_for_transcript_file",
    "mirror_frame",
    "project_key_for_directory",
    "projects_dir",
    "restore_transcript",
    "transcript_file",
]
