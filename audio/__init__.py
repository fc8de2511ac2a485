"""tts-pipeline's audio core: TTS provider chunks in, one mastered audio file out.

A pure library (no Dify import) shared by the Dify tool and the local runner. Stages, each a module:
script → synth → segments → decode → assemble → master → tags/subtitles; `pipeline.narrate` runs them.
"""
