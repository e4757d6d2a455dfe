from kebench.cli import main

main()
