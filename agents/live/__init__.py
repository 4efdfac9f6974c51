"""Live speech-to-text: microphone streams in, partial and final transcripts out.

Pure pieces, each tested without sockets: `vad` (Silero frame by frame), `endpointing`
(utterances from speech probabilities), `agreement` (the LocalAgreement-2 commit policy)
and `session` (one stream: its audio, utterances, decodes and events). The STT agent
drives them and sends their decodes to the model manager as ordinary transcribe jobs, so
the decodes of every open stream batch together.
"""
