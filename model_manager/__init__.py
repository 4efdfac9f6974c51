"""voicebus model manager: loads speech models once and batches requests from every client."""
