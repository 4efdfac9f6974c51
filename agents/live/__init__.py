"""Live speech-to-text: microphone streams in, partial and final transcripts out.

Pure pieces, each tested without sockets: `vad` (Silero frame by frame), `endpointing`
(utterances from speech probabilities), `agreement` (the LocalAgreement-2 commit policy),
`audio` (a stream's audio, kept bounded), `session` (one stream: its utterances, decodes
and events), `partials` (the room for partial decodes that streams share) and `stats`.
`streams` runs them for the STT agent and sends their decodes to the model manager as
ordinary transcribe jobs (`decodes`), so the decodes of every open stream batch together.
"""
