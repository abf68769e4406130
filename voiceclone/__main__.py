from voiceclone.cli import main

main()
