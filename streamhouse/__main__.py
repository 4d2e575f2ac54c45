from streamhouse.cli import main

main()
