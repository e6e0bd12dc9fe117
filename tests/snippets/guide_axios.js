const axios = require('axios');

async function chatWithLLM() {
  try {
    const response = await axios.post('http://YOUR_SERVER_IP:7000/v1/chat/completions', {
      model: 'gpt-4o',
      messages: [
        {
          role: 'user',
          content: 'Hello, how are you?'
        }
      ]
    }, {
      headers: {
        'Authorization': 'Bearer YOUR_CLIENT_API_KEY',
        'Content-Type': 'application/json'
      }
    });
    
    console.log('Response:', response.data);
  } catch (error) {
    if (error.response) {
      console.error('API Error:', error.response.data);
    } else {
      console.error('Network Error:', error.message);
    }
  }
}

chatWithLLM();
