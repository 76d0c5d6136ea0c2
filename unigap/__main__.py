from unigap.cli import main

main()
