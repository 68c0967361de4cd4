from icl_search.cli import app

app()
