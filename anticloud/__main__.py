from anticloud.cli import main

main()
