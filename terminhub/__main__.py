from terminhub.cli import app

app()
