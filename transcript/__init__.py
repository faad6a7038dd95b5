"""claude's own transcript in the ledger: mirror frames recorded during chatledger's turns,
and the transcript file written back from the ledger before a resume (issue 20, items 1-2).

The session actor's run job calls them (`actors/transcripts.py`); `chatledger export ID`
carries a session's transcript sessions along (`with_transcripts`). They share the ledger sessions and
events of `chatledger.sdk_store`, so an SDK user and chatledger read the same transcripts.
"""

from .companions import transcript_sessions, with_transcripts
from .mirror import (
    MirrorFrame,
    key_for_transcript_file,
    mirror_frame,
    project_key_for_directory,
    projects_dir,
    transcript_file,
)
from .recorder import RecorderReport, TranscriptRecorder
from .restore import CompleteFiles, Restored, note_if_complete, restore_transcript

__all__ = [
    "CompleteFiles",
    "MirrorFrame",
    "RecorderReport",
    "Restored",
    "TranscriptRecorder",
    "key_for_transcript_file",
    "mirror_frame",
    "note_if_complete",
    "project_key_for_directory",
    "projects_dir",
    "restore_transcript",
    "transcript_file",
    "transcript_sessions",
    "with_transcripts",
]
