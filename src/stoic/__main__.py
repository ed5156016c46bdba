from stoic.cli import main

main()
